package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestApplyConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "authpipe.yaml")
	yaml := "brokers: [a:1, b:2]\nmax-in-flight: 7\nbatch-interval: 1s\ngroup: from-file\ndelivery: at-least-once\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var (
		brokers  []string
		inflight int
		interval time.Duration
		group    string
		delivery string
	)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.StringSliceVar(&brokers, "brokers", nil, "")
	fs.IntVar(&inflight, "max-in-flight", 0, "")
	fs.DurationVar(&interval, "batch-interval", 250*time.Millisecond, "")
	fs.StringVar(&group, "group", "authpipe-verify", "")
	fs.StringVar(&delivery, "delivery", "exactly-once", "")
	fs.String("config", "", "")
	if err := fs.Parse([]string{"--group", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	env := []string{"AUTHPIPE_MAX_IN_FLIGHT=9", "AUTHPIPE_GROUP=from-env", "AUTHPIPE_UNRELATED=x", "PATH=/bin"}
	if err := applyConfig(fs, path, env); err != nil {
		t.Fatal(err)
	}
	if strings.Join(brokers, ",") != "a:1,b:2" || inflight != 9 || interval != time.Second || group != "from-flag" || delivery != "at-least-once" {
		t.Fatalf("brokers %v inflight %d interval %s group %s delivery %s", brokers, inflight, interval, group, delivery)
	}
}

func TestApplyConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown.yaml": "max-inflight: 3\n",
		"badtype.yaml": "max-in-flight: lots\n",
		"nested.yaml":  "max-in-flight:\n  a: 1\n",
		"syntax.yaml":  "max-in-flight: [\n",
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		fs.Int("max-in-flight", 0, "")
		err := applyConfig(fs, path, nil)
		var ue usageError
		if err == nil || !asUsage(err, &ue) {
			t.Errorf("%s: err %v, want a usage error", name, err)
		}
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.Int("max-in-flight", 0, "")
	if err := applyConfig(fs, "", []string{"AUTHPIPE_MAX_IN_FLIGHT=many"}); err == nil || !strings.Contains(err.Error(), "AUTHPIPE_MAX_IN_FLIGHT") {
		t.Errorf("bad env value: %v", err)
	}
}

func asUsage(err error, ue *usageError) bool {
	u, ok := err.(usageError)
	if ok {
		*ue = u
	}
	return ok
}
