package main

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestConfigurationDocumented: every option of the commands
// docs/configuration.md covers (run, produce, tail, report …, demo) has a
// row in one of its tables, and that row's default is the flag's. A
// flag added without its row, or a default changed in one place only,
// fails here. `verify` is documented in the README instead.
func TestConfigurationDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	// option name → the default column of each row naming it (`topic`
	// has one row for produce and one for tail).
	rows := map[string][]string{}
	name := regexp.MustCompile("`([a-z0-9-]+)`")
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cols := strings.Split(line, "|")
		if len(cols) < 4 {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cols[1], -1) {
			rows[m[1]] = append(rows[m[1]], strings.TrimSpace(cols[2]))
		}
	}
	// Defaults computed when the command runs, which the row says in
	// words: flag → what the row must contain.
	computed := map[string]string{
		"max-in-flight":     "256 × CPUs",         // run: 0 = per core; demo: the same, evaluated
		"batch-max-records": "16 × max-in-flight", // 0 = derived
	}
	checked := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() == "verify" || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if f.Name == "help" {
				return
			}
			checked++
			defaults, ok := rows[f.Name]
			if !ok {
				t.Errorf("%s --%s (default %q): no row in docs/configuration.md", c.CommandPath(), f.Name, f.DefValue)
				return
			}
			for _, d := range defaults {
				if documentsDefault(d, f, computed[f.Name]) {
					return
				}
			}
			t.Errorf("%s --%s: default %q, docs/configuration.md says %q", c.CommandPath(), f.Name, f.DefValue, defaults)
		})
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCmd(nil, nil, nil))
	t.Logf("%d options of run, produce, tail, report and demo checked against docs/configuration.md", checked)
}

// documentsDefault reports whether a row's default column d states f's
// default: the value itself (in backquotes, or leading a column such as
// "67108864 (64 MiB)"), a duration in its short form ("1h" for 1h0m0s,
// "60s" for 1m0s), words for an empty value, or for a computed default
// the words expected.
func documentsDefault(d string, f *pflag.Flag, computed string) bool {
	v := f.DefValue
	if computed != "" && strings.Contains(d, computed) {
		return true
	}
	if v == "" || v == "[]" {
		return d != "" // "none", "empty", "now", "system roots": said in words
	}
	forms := []string{v}
	if f.Value.Type() == "duration" {
		dur, err := time.ParseDuration(v)
		if err == nil {
			short := strings.TrimSuffix(strings.TrimSuffix(v, "0s"), "0m")
			forms = append(forms, short, strconv.FormatInt(int64(dur/time.Second), 10)+"s")
		}
	}
	for _, s := range forms {
		if d == s || strings.Contains(d, "`"+s+"`") || strings.HasPrefix(d, s+" ") {
			return true
		}
	}
	return false
}
