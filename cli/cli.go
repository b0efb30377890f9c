// Package cli parses the flags of every Wiremesh command together with their
// environment twins, and builds the slog logger they share.
//
// A command describes its options as a struct whose fields carry a flag name,
// an environment name (without the binary prefix) and help text:
//
//	type Config struct {
//		Listen string `flag:"listen" env:"LISTEN" envDefault:":443" help:"UDP address to serve QUIC and STUN on"`
//	}
//
// Parse reads the environment first with caarlos0/env (RELAYD_LISTEN, for a
// command whose prefix is RELAYD_), then the command line, so a flag beats
// its variable. Supported field types: string, bool, int, uint16, float64,
// time.Duration and []string (comma separated). Embedded structs are walked,
// so shared option groups such as Logging can be reused.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
)

// ErrHelp is returned by Parse when -h or --help was given and usage was printed.
var ErrHelp = flag.ErrHelp

// Parse fills cfg, a pointer to a struct, from the environment (each field's
// env tag behind envPrefix, such as "RELAYD_") and then from args. It returns
// the positional arguments that remain. On -h/--help it prints usage, listing
// every flag's environment twin, to out and returns ErrHelp.
func Parse(name, envPrefix, usage string, cfg any, args []string, out io.Writer) ([]string, error) {
	if err := env.ParseWithOptions(cfg, env.Options{Prefix: envPrefix}); err != nil {
		return nil, envError(name, envPrefix, cfg, err)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var lines []string
	if err := bind(fs, reflect.ValueOf(cfg).Elem(), envPrefix, &lines); err != nil {
		return nil, err
	}
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: %s\n", usage)
		if len(lines) > 0 {
			fmt.Fprintf(out, "\nflags (each also read from its environment variable; a flag wins):\n")
			for _, l := range lines {
				fmt.Fprintln(out, l)
			}
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, ErrHelp // the flag package has printed usage
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// Flags after positional arguments are accepted too (meshnode ping -c 3 b --json).
	var pos []string
	rest := fs.Args()
	for len(rest) > 0 {
		pos = append(pos, rest[0])
		if err := fs.Parse(rest[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, ErrHelp // the flag package has printed usage
			}
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		rest = fs.Args()
	}
	return pos, nil
}

func bind(fs *flag.FlagSet, v reflect.Value, envPrefix string, lines *[]string) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		fv := v.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			if err := bind(fs, fv, envPrefix, lines); err != nil {
				return err
			}
			continue
		}
		name := f.Tag.Get("flag")
		if name == "" {
			continue
		}
		help := f.Tag.Get("help")
		if e := f.Tag.Get("env"); e != "" {
			help += " [$" + envPrefix + e + "]"
		}
		var def string
		switch p := fv.Addr().Interface().(type) {
		case *string:
			fs.StringVar(p, name, *p, help)
			def = *p
		case *bool:
			fs.BoolVar(p, name, *p, help)
			def = strconv.FormatBool(*p)
		case *int:
			fs.IntVar(p, name, *p, help)
			def = strconv.Itoa(*p)
		case *uint16:
			fs.Func(name, help, func(s string) error {
				n, err := strconv.ParseUint(s, 10, 16)
				if err != nil {
					return fmt.Errorf("must be a number from 0 to 65535")
				}
				*p = uint16(n)
				return nil
			})
			def = strconv.Itoa(int(*p))
		case *float64:
			fs.Float64Var(p, name, *p, help)
			def = strconv.FormatFloat(*p, 'g', -1, 64)
		case *time.Duration:
			fs.DurationVar(p, name, *p, help)
			def = p.String()
		case *[]string:
			fs.Func(name, help+" (comma separated)", func(s string) error {
				*p = SplitList(s)
				return nil
			})
			def = strings.Join(*p, ",")
		default:
			return fmt.Errorf("cli: field %s: unsupported type %s", f.Name, f.Type)
		}
		l := "  --" + name
		if def != "" && def != "false" && def != "0" && def != "0s" {
			l += " (default " + def + ")"
		}
		*lines = append(*lines, l+"\n      "+help)
	}
	return nil
}

// SplitList splits a comma-separated list, trimming spaces and dropping
// empty items.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Logging holds the logging options every binary takes.
type Logging struct {
	LogFormat string `flag:"log-format" env:"LOG_FORMAT" envDefault:"text" help:"log format: text or json"`
	LogLevel  string `flag:"log-level" env:"LOG_LEVEL" envDefault:"info" help:"log level: debug, info, warn or error"`
}

// Logger returns a slog logger writing to w as the options say.
func (l Logging) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.LogLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch l.LogFormat {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", l.LogFormat)
}

// envError rewrites caarlos0/env's parse errors to name the variable, such
// as "relayd: $RELAYD_DRAIN_GRACE: time: invalid duration \"soon\"".
func envError(name, envPrefix string, cfg any, err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return fmt.Errorf("%s: environment: %w", name, err)
	}
	var msgs []string
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			if f, ok := findField(reflect.TypeOf(cfg).Elem(), pe.Name); ok {
				msgs = append(msgs, "$"+envPrefix+f.Tag.Get("env")+": "+pe.Err.Error())
				continue
			}
		}
		msgs = append(msgs, e.Error())
	}
	return fmt.Errorf("%s: %s", name, strings.Join(msgs, "; "))
}

func findField(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Name == name {
			return f, true
		}
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			if sf, ok := findField(f.Type, name); ok {
				return sf, true
			}
		}
	}
	return reflect.StructField{}, false
}
