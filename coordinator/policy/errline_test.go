package policy

import "testing"

func TestErrorLine(t *testing.T) {
	cases := []struct {
		name string
		text string
		line int
	}{
		{"syntax", "{\n \"acls\": [\n  {\"action\": \"accept\" \"src\": [\"*\"]}\n]}", 3},
		{"type", "{\n // comment\n \"acls\": [\n  {\"action\": 5}\n]}", 4},
		{"semantic", "{\n \"tagOwners\": {},\n \"acls\": [\n  {\"action\": \"accept\",\n   \"src\": [\"tag:nope\"], \"dst\": [\"*:*\"]}\n]}", 5},
		{"unknown field", "{\n\n \"bogus\": 1}", 3},
		{"failing test", "{\n \"acls\": [],\n \"tests\": [\n  {\"src\": \"1.2.3.4\", \"accept\": [\"5.6.7.8:80\"]}]}", 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Parse([]byte(c.text))
			if err == nil {
				err = p.RunTests(nil)
			}
			if err == nil {
				t.Fatal("no error")
			}
			if got := ErrorLine([]byte(c.text), err); got != c.line {
				t.Fatalf("ErrorLine = %d, want %d (error: %v)", got, c.line, err)
			}
		})
	}
	if ErrorLine([]byte("{}"), nil) != 0 {
		t.Fatal("nil error has a line")
	}
}

func TestCheck(t *testing.T) {
	p, err := Parse([]byte(`{"tagOwners": {"tag:web": []}, "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(name string) (Principal, bool) {
		switch name {
		case "laptop":
			return Principal{Name: "laptop", User: "alice@example.com"}, true
		case "srv":
			return Principal{Name: "srv", Tags: []string{"tag:web"}}, true
		}
		return Principal{}, false
	}
	for _, c := range []struct {
		src, dst string
		port     uint16
		want     bool
	}{
		{"laptop", "srv", 443, true},
		{"laptop", "srv", 22, false},
		{"srv", "laptop", 443, false},
		{"alice@example.com", "tag:web", 443, true},
		{"bob@example.com", "srv", 443, false},
	} {
		got, err := p.Check(c.src, c.dst, c.port, lookup)
		if err != nil || got != c.want {
			t.Errorf("Check(%s, %s, %d) = %v, %v; want %v", c.src, c.dst, c.port, got, err, c.want)
		}
	}
	if _, err := p.Check("*", "srv", 1, lookup); err == nil {
		t.Error("Check accepted a wildcard source")
	}
}
