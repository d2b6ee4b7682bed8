package main

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// printable returns s safe to write to a terminal: every rune that is not
// printable (control characters such as ESC, which would start a terminal
// escape sequence, tabs, which would shift table columns, bidirectional
// and other format characters) and every byte that is not UTF-8 is written
// as a Go escape (\x1b, \u202e). tail's pretty lines and report list's
// table carry text from outside: signature tags and From domains of
// received mail, record keys, replies of remote SMTP servers.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsPrint(r):
			b.WriteString(s[i : i+size])
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
		i += size
	}
	return b.String()
}
