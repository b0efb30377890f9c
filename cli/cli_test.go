package cli

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

type testConfig struct {
	Logging
	Listen  string        `flag:"listen" env:"LISTEN" envDefault:":443" help:"listen address"`
	Port    uint16        `flag:"port" env:"PORT" envDefault:"41641" help:"udp port"`
	Grace   time.Duration `flag:"grace" env:"GRACE" envDefault:"5s" help:"drain grace"`
	Tags    []string      `flag:"tags" env:"TAGS" help:"tags"`
	Verbose bool          `flag:"verbose" env:"VERBOSE" help:"more output"`
	Count   int           `flag:"count" env:"COUNT" envDefault:"3" help:"count"`
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		args    []string
		want    testConfig
		wantPos []string
	}{
		{
			name: "defaults",
			want: testConfig{Logging: Logging{"text", "info"}, Listen: ":443", Port: 41641, Grace: 5 * time.Second, Count: 3},
		},
		{
			name: "env",
			env:  map[string]string{"T_LISTEN": ":1", "T_PORT": "7", "T_TAGS": "tag:a,tag:b", "T_VERBOSE": "true", "T_LOG_FORMAT": "json"},
			want: testConfig{Logging: Logging{"json", "info"}, Listen: ":1", Port: 7, Grace: 5 * time.Second, Tags: []string{"tag:a", "tag:b"}, Verbose: true, Count: 3},
		},
		{
			name: "flag beats env",
			env:  map[string]string{"T_LISTEN": ":1", "T_GRACE": "1m"},
			args: []string{"--listen", ":2", "-grace=2s"},
			want: testConfig{Logging: Logging{"text", "info"}, Listen: ":2", Port: 41641, Grace: 2 * time.Second, Count: 3},
		},
		{
			name:    "interspersed positional",
			args:    []string{"peer-b", "--count", "9", "extra"},
			want:    testConfig{Logging: Logging{"text", "info"}, Listen: ":443", Port: 41641, Grace: 5 * time.Second, Count: 9},
			wantPos: []string{"peer-b", "extra"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var cfg testConfig
			pos, err := Parse("t", "T_", "t [flags]", &cfg, tc.args, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg, tc.want) {
				t.Fatalf("cfg = %+v\nwant  %+v", cfg, tc.want)
			}
			if !reflect.DeepEqual(pos, tc.wantPos) {
				t.Fatalf("positional = %q, want %q", pos, tc.wantPos)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	var cfg testConfig
	if _, err := Parse("t", "T_", "", &cfg, []string{"--port", "70000"}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "port") {
		t.Fatalf("bad port: %v", err)
	}
	if _, err := Parse("t", "T_", "", &cfg, []string{"--nope"}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("unknown flag: %v", err)
	}
	t.Setenv("T_GRACE", "soon")
	if _, err := Parse("t", "T_", "", &cfg, nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "GRACE") {
		t.Fatalf("bad env: %v", err)
	}
}

func TestHelpListsEnv(t *testing.T) {
	var cfg testConfig
	var out bytes.Buffer
	_, err := Parse("t", "T_", "t run [flags]", &cfg, []string{"--help"}, &out)
	if !errors.Is(err, ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"usage: t run [flags]", "--listen", "$T_LISTEN", "--log-format", "$T_LOG_FORMAT"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	l, err := Logging{"json", "debug"}.Logger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("hello", "k", 1)
	if !strings.Contains(buf.String(), `"msg":"hello"`) {
		t.Fatalf("json log: %s", buf.String())
	}
	if _, err := (Logging{"xml", "info"}).Logger(&buf); err == nil {
		t.Fatal("bad format accepted")
	}
	if _, err := (Logging{"text", "loud"}).Logger(&buf); err == nil {
		t.Fatal("bad level accepted")
	}
}

func TestUnsupportedType(t *testing.T) {
	var cfg struct {
		X complex64 `flag:"x"`
	}
	if _, err := Parse("t", "T_", "", &cfg, nil, &bytes.Buffer{}); err == nil {
		t.Fatal("unsupported type accepted")
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0}, {ErrHelp, 0}, {Usagef("no command"), 2}, {fmt.Errorf("run: %w", Usagef("x")), 2}, {errors.New("boom"), 1},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if got := OneLine("a\n  b\tc"); got != "a b c" {
		t.Errorf("OneLine: %q", got)
	}
}
