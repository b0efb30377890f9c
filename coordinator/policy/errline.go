package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
)

// Finding the line a parse error is about, for editors (the web console
// marks it). HuJSON syntax errors name their line; JSON type errors carry
// a byte offset, which Parse turns into a line (Standardize keeps offsets);
// semantic errors quote the value they refuse, which is looked up in the
// text.

var (
	lineRE   = regexp.MustCompile(`line (\d+)`)
	quotedRE = regexp.MustCompile(`"((?:[^"\\]|\\.)+)"`)
)

// ErrorLine returns the 1-based line of text that err, returned by Parse
// or RunTests for text, is about, or 0 when it cannot tell.
func ErrorLine(text []byte, err error) int {
	if err == nil {
		return 0
	}
	msg := err.Error()
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil && n > 0 {
			return n
		}
	}
	for _, m := range quotedRE.FindAllStringSubmatch(msg, -1) {
		if i := bytes.Index(text, []byte(`"`+m[1]+`"`)); i >= 0 {
			return bytes.Count(text[:i], []byte("\n")) + 1
		}
	}
	return 0
}

// positioned prefixes a JSON decoding error that carries a byte offset
// with its line and column in text.
func positioned(text []byte, err error) error {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	if off < 0 || off > int64(len(text)) {
		return err
	}
	before := text[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n')
	return fmt.Errorf("line %d, column %d: %w", line, col, err)
}

// Check answers "may src reach dst on port?" from the compiled policy. src
// and dst are what a test names (a node, tag, user, host or IP); lookup
// resolves node names to registered nodes.
func (p *Policy) Check(src, dst string, port uint16, lookup func(string) (Principal, bool)) (bool, error) {
	s, err := p.principal(src, lookup)
	if err != nil {
		return false, fmt.Errorf("source %q: %v", src, err)
	}
	d, err := p.principal(dst, lookup)
	if err != nil {
		return false, fmt.Errorf("destination %q: %v", dst, err)
	}
	return p.Allows(s, d, port), nil
}
