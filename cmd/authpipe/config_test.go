package main

import (
	"os"
	"path/filepath"
	"slices"
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
	if err := fs.Parse([]string{"--group", "from-flag", "--config", path}); err != nil {
		t.Fatal(err)
	}
	env := []string{"AUTHPIPE_MAX_IN_FLIGHT=9", "AUTHPIPE_GROUP=from-env", "AUTHPIPE_UNRELATED=x", "PATH=/bin"}
	if err := applyConfig(fs, env); err != nil {
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
		err := applyConfig(fs, []string{"AUTHPIPE_CONFIG=" + path})
		var ue usageError
		if err == nil || !asUsage(err, &ue) {
			t.Errorf("%s: err %v, want a usage error", name, err)
		}
		// The errors a user reads: a suggestion for a typo, the type for a
		// value that is not one.
		if want := map[string]string{
			"unknown.yaml": `unknown option "max-inflight" (did you mean "max-in-flight"?)`,
			"badtype.yaml": `option max-in-flight: "lots" is not an int`,
		}[name]; want != "" && (err == nil || !strings.HasSuffix(err.Error(), want)) {
			t.Errorf("%s: %v, want it to end %s", name, err, want)
		}
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.Int("max-in-flight", 0, "")
	if err := applyConfig(fs, []string{"AUTHPIPE_MAX_IN_FLIGHT=many"}); err == nil || !strings.Contains(err.Error(), "AUTHPIPE_MAX_IN_FLIGHT") {
		t.Errorf("bad env value: %v", err)
	}
}

// TestConfigFileFromEnvironment: AUTHPIPE_CONFIG names the file when
// --config is not given (until session 22 it was documented but not read:
// run started with its defaults), and --config wins over it.
func TestConfigFileFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string { return writeTestFile(t, dir, name, body) }
	fromEnv := write("env.yaml", "group: from-env-file\n")
	fromFlag := write("flag.yaml", "group: from-flag-file\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "from-env-file"},
		{[]string{"--config", fromFlag}, "from-flag-file"},
	} {
		var group string
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		fs.StringVar(&group, "group", "authpipe-verify", "")
		fs.String("config", "", "")
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if err := applyConfig(fs, []string{"AUTHPIPE_CONFIG=" + fromEnv}); err != nil {
			t.Fatal(err)
		}
		if group != tc.want {
			t.Errorf("args %q: group %q, want %q", tc.args, group, tc.want)
		}
	}
	// A bad file named by the environment is refused as one named by the flag.
	bad := write("bad.yaml", "max-in-flight: notanumber\n")
	cmd := newRunCmd()
	if err := applyConfig(cmd.Flags(), []string{"AUTHPIPE_CONFIG=" + bad}); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("AUTHPIPE_CONFIG with a bad value: %v, want an error naming %s", err, bad)
	}
	// A file that cannot be read is named with where it was named.
	missing := filepath.Join(dir, "missing.yaml")
	if err := applyConfig(newRunCmd().Flags(), []string{"AUTHPIPE_CONFIG=" + missing}); err == nil || !strings.Contains(err.Error(), "AUTHPIPE_CONFIG "+missing) {
		t.Errorf("AUTHPIPE_CONFIG naming a missing file: %v", err)
	}
}

// TestTailProduceReadRunConfig: tail and produce take run's file: its Kafka
// keys apply, run's other keys are skipped, run's listen stands for
// brokers (the embedded broker) unless brokers is set, and run's topics
// for --topic unless --topic is given or set under its own name.
func TestTailProduceReadRunConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string { return writeTestFile(t, dir, name, body) }
	runFile := write("run.yaml", "listen: 127.0.0.1:19999\nverdict-topic: v.prod\ninput-topic: raw.prod\nmax-in-flight: 64\ntls: true\nmax-message-bytes: 1000\n")
	withBrokers := write("brokers.yaml", "brokers: [k1:9092, k2:9092]\nlisten: 127.0.0.1:19999\n")
	typo := write("typo.yaml", "verdict-topc: v\n")

	parse := func(cmd interface {
		Flags() *pflag.FlagSet
	}, args ...string) *pflag.FlagSet {
		fs := cmd.Flags()
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return fs
	}
	get := func(fs *pflag.FlagSet, name string) string { return fs.Lookup(name).Value.String() }

	fs := parse(newTailCmd(), "--config", runFile)
	if err := applyTailConfig(fs, nil); err != nil {
		t.Fatal(err)
	}
	if get(fs, "brokers") != "[127.0.0.1:19999]" || get(fs, "topic") != "v.prod" || get(fs, "tls") != "true" {
		t.Errorf("tail: brokers %s topic %s tls %s", get(fs, "brokers"), get(fs, "topic"), get(fs, "tls"))
	}
	fs = parse(newProduceCmd(), "--config", runFile)
	if err := applyProduceConfig(fs, nil); err != nil {
		t.Fatal(err)
	}
	if get(fs, "brokers") != "[127.0.0.1:19999]" || get(fs, "topic") != "raw.prod" || get(fs, "max-message-bytes") != "1000" {
		t.Errorf("produce: brokers %s topic %s max-message-bytes %s", get(fs, "brokers"), get(fs, "topic"), get(fs, "max-message-bytes"))
	}
	// brokers in the file win over listen; --topic over verdict-topic;
	// AUTHPIPE_VERDICT_TOPIC applies as the file's key would.
	fs = parse(newTailCmd(), "--config", withBrokers, "--topic", "mine")
	if err := applyTailConfig(fs, []string{"AUTHPIPE_VERDICT_TOPIC=v.env"}); err != nil {
		t.Fatal(err)
	}
	if get(fs, "brokers") != "[k1:9092,k2:9092]" || get(fs, "topic") != "mine" {
		t.Errorf("tail with brokers and --topic: brokers %s topic %s", get(fs, "brokers"), get(fs, "topic"))
	}
	fs = parse(newTailCmd())
	if err := applyTailConfig(fs, []string{"AUTHPIPE_VERDICT_TOPIC=v.env"}); err != nil {
		t.Fatal(err)
	}
	if get(fs, "topic") != "v.env" {
		t.Errorf("tail with AUTHPIPE_VERDICT_TOPIC: topic %s", get(fs, "topic"))
	}
	// A key no command knows is still an error.
	fs = parse(newTailCmd(), "--config", typo)
	var ue usageError
	if err := applyTailConfig(fs, nil); err == nil || !asUsage(err, &ue) {
		t.Errorf("typo: %v, want a usage error", err)
	}
}

// TestUnknownEnvOptions: AUTHPIPE_* variables that name no option of any
// command are reported (run logs them), those of other commands, the
// config file's and the test and benchmark knobs are not.
func TestUnknownEnvOptions(t *testing.T) {
	env := []string{"AUTHPIPE_MAX_INFLIGHT=5", "AUTHPIPE_MAX_IN_FLIGHT=5", "AUTHPIPE_FORMAT=json", "AUTHPIPE_CONFIG=x",
		"AUTHPIPE_BENCH_N=1", "AUTHPIPE_TEST_LOG=1", "AUTHPIPE_ENVELOPES=e", "AUTHPIPE_BROKRES=k:9092", "PATH=/bin"}
	got := unknownEnvOptions(env)
	want := [][2]string{
		{"AUTHPIPE_BROKRES", "AUTHPIPE_BROKERS"},
		{"AUTHPIPE_MAX_INFLIGHT", "AUTHPIPE_MAX_IN_FLIGHT"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("unknownEnvOptions = %q, want %q", got, want)
	}
	if got := unknownEnvOptions([]string{"AUTHPIPE_COMPLETELY_UNRELATED=1"}); len(got) != 1 || got[0][1] != "" {
		t.Errorf("a name close to none: %q, want no suggestion", got)
	}
}

// writeTestFile writes body to dir/name and returns the path.
func writeTestFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func asUsage(err error, ue *usageError) bool {
	u, ok := err.(usageError)
	if ok {
		*ue = u
	}
	return ok
}
