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
