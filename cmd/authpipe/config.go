package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	krbclient "github.com/jcmturner/gokrb5/v8/client"
	krbconfig "github.com/jcmturner/gokrb5/v8/config"
	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/krberror"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/aws"
	"github.com/twmb/franz-go/pkg/sasl/kerberos"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/authpipe/authpipe/internal/awscreds"
)

// envPrefix starts every environment variable that sets an option:
// AUTHPIPE_MAX_IN_FLIGHT sets --max-in-flight.
const envPrefix = "AUTHPIPE_"

// applyConfig fills the flags of fs that were not given on the command
// line from, in increasing precedence, the YAML file named by fs's
// --config flag or else the AUTHPIPE_CONFIG environment variable (none if
// neither is set) and AUTHPIPE_* environment variables (environ, as
// os.Environ returns). Keys are flag names: `max-in-flight: 512` in YAML,
// AUTHPIPE_MAX_IN_FLIGHT in the environment. Lists are YAML sequences or
// comma-separated strings. A key that names no flag is an error, so typos
// do not pass silently. Flags given on the command line win over both.
func applyConfig(fs *pflag.FlagSet, environ []string) error {
	return applyConfigShared(fs, environ, nil, nil)
}

// applyConfigShared is applyConfig for a command that reads the
// configuration file of another: `authpipe report ...`, `produce` and
// `tail` read the file of `authpipe run`, so keys for which others(key) is
// true and that name no flag of fs are skipped rather than refused. An
// option of the other command can stand for one of fs under another name
// (aliases, key to flag name: run's verdict-topic is tail's topic); it
// applies when the flag is set neither on the command line nor under its
// own name.
func applyConfigShared(fs *pflag.FlagSet, environ []string, others func(key string) bool, aliases map[string]string) error {
	path, source := configPath(fs, environ)
	k := koanf.New("\x00") // keys are flat; no nesting delimiter
	if path != "" {
		if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
			return usagef("%s %s: %v", source, path, err)
		}
	}
	fromEnv := map[string]string{}
	err := k.Load(env.Provider("\x00", env.Opt{
		Prefix:      envPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(key, v string) (string, any) {
			name := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(key, envPrefix)), "_", "-")
			fromEnv[name] = key
			return name, v
		},
	}), nil)
	if err != nil {
		return fmt.Errorf("environment: %w", err)
	}
	keys := k.Keys()
	sort.Strings(keys)
	for _, key := range keys {
		f := fs.Lookup(key)
		if to, ok := aliases[key]; ok && f == nil {
			if k.Exists(to) {
				continue // the flag's own name wins
			}
			f = fs.Lookup(to)
		}
		where := "config file " + path
		if ev, ok := fromEnv[key]; ok {
			where = "environment variable " + ev
		}
		if f == nil || key == "config" {
			if _, ok := fromEnv[key]; ok {
				continue // other AUTHPIPE_ variables are not ours to judge
			}
			if f == nil && others != nil && others(key) {
				continue // an option of the command whose file this is
			}
			return usagef("%s: unknown option %q%s", where, key, didYouMean(key, flagNames(fs)))
		}
		if f.Changed {
			continue
		}
		val, err := flagValue(k.Get(key))
		if err != nil {
			return usagef("%s: option %s: %v", where, key, err)
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			var items []string
			if val != "" {
				items = strings.Split(val, ",")
			}
			err = sv.Replace(items)
		} else {
			err = f.Value.Set(val)
		}
		if err != nil {
			return usagef("%s: option %s: %v", where, key, valueError(f, val, err))
		}
	}
	return nil
}

// didYouMean suggests the name closest to a mistyped option key, as
// ` (did you mean "max-in-flight"?)`, or "" when none is close.
func didYouMean(key string, names []string) string {
	if best := closest(key, names); best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}

// closest returns the name nearest to key in edit distance, counted
// without the separators ('-' and '_', so max-inflight is one letter from
// max-in-flight), when it is at most a third of key's length away, else "".
func closest(key string, names []string) string {
	bare := func(s string) string { return strings.NewReplacer("-", "", "_", "").Replace(s) }
	k := bare(key)
	best, bestDist := "", len(k)/3+1
	for _, n := range names {
		if d := editDistance(k, bare(n)); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

// flagNames lists the names of fs's flags.
func flagNames(fs *pflag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	return names
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// valueError says why a value from the file or the environment does not
// fit its flag: pflag's number parsers answer with strconv's wording
// ("strconv.ParseInt: parsing \"ten\": invalid syntax"), which names the
// parser, not the option's type.
func valueError(f *pflag.Flag, val string, err error) error {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		if errors.Is(ne.Err, strconv.ErrRange) {
			return fmt.Errorf("%q is out of range for a %s", val, f.Value.Type())
		}
		return fmt.Errorf("%q is not a%s %s", val, article(f.Value.Type()), f.Value.Type())
	}
	return err
}

// article is "n" before a type name that starts with a vowel ("an int").
func article(word string) string {
	if word != "" && strings.ContainsRune("aeiou", rune(word[0])) {
		return "n"
	}
	return ""
}

// isRunOption reports whether key names an option of `authpipe run`: the
// keys of run's file that the commands reading it skip.
func isRunOption(key string) bool { return newRunCmd().Flags().Lookup(key) != nil }

// unknownEnvOptions returns the AUTHPIPE_* variables of environ that name
// no option of any authpipe command (nor AUTHPIPE_CONFIG), sorted, each
// with the variable it is closest to ("" for none):
// each command ignores the variables of the others, so a mistyped one
// (AUTHPIPE_MAX_INFLIGHT) would otherwise pass without a word. The test
// and benchmark knobs (AUTHPIPE_TEST_*, AUTHPIPE_BENCH_*) are not options.
func unknownEnvOptions(environ []string) [][2]string {
	known := map[string]bool{"config": true}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd(nil, nil, nil))
	var vars []string
	for name := range known {
		vars = append(vars, envPrefix+strings.ReplaceAll(strings.ToUpper(name), "-", "_"))
	}
	var out [][2]string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		rest, ok := strings.CutPrefix(name, envPrefix)
		if !ok || strings.HasPrefix(rest, "TEST_") || strings.HasPrefix(rest, "BENCH_") {
			continue
		}
		if !known[strings.ReplaceAll(strings.ToLower(rest), "_", "-")] {
			out = append(out, [2]string{name, closest(name, vars)})
		}
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

// configPath is the configuration file a command reads, and where it was
// named: its --config flag when given on the command line, else the
// AUTHPIPE_CONFIG environment variable, else none ("").
func configPath(fs *pflag.FlagSet, environ []string) (path, source string) {
	if f := fs.Lookup("config"); f != nil && f.Changed {
		return f.Value.String(), "--config"
	}
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, envPrefix+"CONFIG="); ok {
			return v, envPrefix + "CONFIG"
		}
	}
	return "", ""
}

func flagValue(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			s, err := flagValue(e)
			if err != nil {
				return "", err
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	case map[string]any:
		return "", fmt.Errorf("nested maps are not options (keys are flag names)")
	default:
		return fmt.Sprint(x), nil
	}
}

// kafkaFlags are the options for reaching a Kafka cluster, shared by run,
// produce and tail.
type kafkaFlags struct {
	brokers       []string
	tls           bool
	tlsCA         string
	tlsCert       string
	tlsKey        string
	tlsServerName string
	saslMechanism string
	saslUser      string
	saslPassword  string
	saslTokenFile string
	krbConfig     string
	krbKeytab     string
	krbService    string

	// log, when set, is told where aws-msk-iam found its credentials.
	log *slog.Logger
	// waiting, when set, is told once that check is waiting for brokers
	// that do not answer yet (produce and tail give their standard error
	// when it is a terminal: a person sees why nothing happens).
	waiting io.Writer
}

func (k *kafkaFlags) register(f *pflag.FlagSet, brokersHelp string) {
	f.StringSliceVar(&k.brokers, "brokers", nil, brokersHelp)
	f.BoolVar(&k.tls, "tls", false, "connect to the brokers with TLS")
	f.StringVar(&k.tlsCA, "tls-ca", "", "PEM `file` of CAs to trust for the brokers (default: system roots); implies --tls")
	f.StringVar(&k.tlsCert, "tls-cert", "", "PEM client certificate `file` for mutual TLS; implies --tls")
	f.StringVar(&k.tlsKey, "tls-key", "", "PEM private key `file` of --tls-cert")
	f.StringVar(&k.tlsServerName, "tls-server-name", "", "expected broker certificate `name` (default: the host dialled)")
	f.StringVar(&k.saslMechanism, "sasl-mechanism", "", "SASL `mechanism`: plain, scram-sha-256, scram-sha-512, gssapi (Kerberos: principal --sasl-user, key from --kerberos-keytab or --sasl-password), "+
		"oauthbearer (token from --sasl-token-file) "+
		"or aws-msk-iam (credentials from --sasl-user and --sasl-password, else as the AWS SDKs find them: AWS_ACCESS_KEY_ID, "+
		"the ~/.aws profile AWS_PROFILE or default (keys, credential_process, role_arn), "+
		"a web identity token (EKS service account roles), the ECS/EKS container endpoint or the EC2 instance profile; "+
		"region from the broker name or AWS_REGION) (default: no SASL)")
	f.StringVar(&k.saslUser, "sasl-user", "", "SASL user `name` (oauthbearer: the optional authorization id; aws-msk-iam: the access key id, instead of AWS_ACCESS_KEY_ID)")
	f.StringVar(&k.saslPassword, "sasl-password", "", "SASL `password` (prefer the AUTHPIPE_SASL_PASSWORD environment variable; aws-msk-iam: the secret access key)")
	f.StringVar(&k.saslTokenFile, "sasl-token-file", "", "oauthbearer: `file` holding the OAuth bearer token, read again at each authentication so that a token refresher can replace it")
	f.StringVar(&k.krbConfig, "kerberos-config", "", "gssapi: Kerberos configuration `file` (default: $KRB5_CONFIG, else /etc/krb5.conf)")
	f.StringVar(&k.krbKeytab, "kerberos-keytab", "", "gssapi: keytab `file` holding --sasl-user's keys, instead of --sasl-password")
	f.StringVar(&k.krbService, "kerberos-service", "kafka", "gssapi: the brokers' Kerberos service `name` (their principals are name/host@REALM)")
}

// saslMechanismOpt returns the franz-go SASL mechanism of --sasl-mechanism,
// nil for none. oauthbearer and aws-msk-iam read their credentials at
// each authentication (each new broker connection), so that rotated
// tokens and keys are used without a restart.
func (k *kafkaFlags) saslMechanismOpt() (sasl.Mechanism, error) {
	mech := strings.ToLower(k.saslMechanism)
	if k.saslTokenFile != "" && mech != "oauthbearer" {
		return nil, usagef("--sasl-token-file is for --sasl-mechanism oauthbearer, not %q", k.saslMechanism)
	}
	if (k.krbConfig != "" || k.krbKeytab != "") && mech != "gssapi" {
		return nil, usagef("--kerberos-config and --kerberos-keytab are for --sasl-mechanism gssapi, not %q", k.saslMechanism)
	}
	switch mech {
	case "":
		return nil, nil
	case "plain":
		return plain.Auth{User: k.saslUser, Pass: k.saslPassword}.AsMechanism(), nil
	case "scram-sha-256":
		return scram.Auth{User: k.saslUser, Pass: k.saslPassword}.AsSha256Mechanism(), nil
	case "scram-sha-512":
		return scram.Auth{User: k.saslUser, Pass: k.saslPassword}.AsSha512Mechanism(), nil
	case "oauthbearer":
		if k.saslTokenFile == "" {
			return nil, usagef("--sasl-mechanism oauthbearer needs --sasl-token-file")
		}
		file := k.saslTokenFile
		if _, err := readToken(file); err != nil {
			return nil, err
		}
		return oauth.Oauth(func(context.Context) (oauth.Auth, error) {
			tok, err := readToken(file)
			return oauth.Auth{Zid: k.saslUser, Token: tok}, err
		}), nil
	case "aws-msk-iam":
		return k.awsMechanism()
	case "gssapi":
		return k.kerberosMechanism()
	}
	return nil, usagef("--sasl-mechanism %q: want plain, scram-sha-256, scram-sha-512, gssapi, oauthbearer or aws-msk-iam", k.saslMechanism)
}

// awsMechanism is aws-msk-iam. With --sasl-user or --sasl-password the
// keys are static: the flags, each completed from AWS_ACCESS_KEY_ID or
// AWS_SECRET_ACCESS_KEY, with AWS_SESSION_TOKEN. Otherwise awscreds finds
// them as the AWS SDKs do (environment, the shared credentials and config
// files' profile: static keys, credential_process or an assumed role;
// web identity, container endpoint, instance profile) and fetches
// temporary ones again before they expire. Either way they are looked for
// once at start, so that a setup without any fails at once (a usage error
// when nothing is set up, or an AWS_PROFILE without credential settings;
// exit 1 when a source is set up and fails, an AWS_PROFILE in neither
// file included).
func (k *kafkaFlags) awsMechanism() (sasl.Mechanism, error) {
	var creds func(context.Context) (aws.Auth, error)
	var p *awscreds.Provider
	var source, keyID string // of the credentials found at start, for the log
	var expires time.Time
	if k.saslUser != "" || k.saslPassword != "" {
		a := aws.Auth{AccessKey: k.saslUser, SecretKey: k.saslPassword, SessionToken: os.Getenv("AWS_SESSION_TOKEN"), UserAgent: "authpipe"}
		if a.AccessKey == "" {
			a.AccessKey = os.Getenv("AWS_ACCESS_KEY_ID")
		}
		if a.SecretKey == "" {
			a.SecretKey = os.Getenv("AWS_SECRET_ACCESS_KEY")
		}
		if a.AccessKey == "" || a.SecretKey == "" {
			return nil, usagef("aws-msk-iam: --sasl-user and --sasl-password need each other (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
		}
		creds = func(context.Context) (aws.Auth, error) { return a, nil }
		source, keyID = "flags", a.AccessKey
	} else {
		p = awscreds.New()
		creds = func(ctx context.Context) (aws.Auth, error) {
			c, err := p.Retrieve(ctx)
			return aws.Auth{AccessKey: c.AccessKeyID, SecretKey: c.SecretAccessKey, SessionToken: c.SessionToken, UserAgent: "authpipe"}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := creds(ctx); err != nil {
		if errors.Is(err, awscreds.ErrNoCredentials) {
			return nil, usageError{fmt.Errorf("aws-msk-iam: %w", err)}
		}
		return nil, fmt.Errorf("aws-msk-iam: %w", err)
	}
	if p != nil {
		c, _ := p.Retrieve(ctx) // those just fetched, kept by p
		source, keyID, expires = c.Source, c.AccessKeyID, c.Expires
	}
	if k.log != nil {
		// Which of the chain's sources answered: the first thing to
		// know when the brokers refuse the signature.
		attrs := []any{"source", source, "access_key_id", keyID}
		if !expires.IsZero() {
			attrs = append(attrs, "expires", expires)
		}
		k.log.Info("aws-msk-iam credentials", attrs...)
	}
	return aws.ManagedStreamingIAM(creds), nil
}

// kerberosMechanism is gssapi: Kerberos V5 through GSS-API (RFC 4752),
// as Kafka's SASL/GSSAPI has it, with github.com/jcmturner/gokrb5 under
// franz-go's kerberos plugin. The client principal is --sasl-user (name,
// or name@REALM; the realm defaults to the configuration's
// default_realm), its key a keytab or a password; the brokers' principals
// are --kerberos-service/host@REALM, host as the broker is dialled. It
// logs in once at start, so that a refused principal or password ends the
// command at once with the KDC's reason (exit status 1); the
// client renews its ticket-granting ticket itself (gokrb5 logs in again
// with the keytab or password when it can no longer renew).
func (k *kafkaFlags) kerberosMechanism() (sasl.Mechanism, error) {
	if k.saslUser == "" {
		return nil, usagef("--sasl-mechanism gssapi needs --sasl-user, the client principal (name or name@REALM)")
	}
	if (k.krbKeytab == "") == (k.saslPassword == "") {
		return nil, usagef("--sasl-mechanism gssapi needs one of --kerberos-keytab and --sasl-password")
	}
	path := k.krbConfig
	if path == "" {
		path = os.Getenv("KRB5_CONFIG")
	}
	if path == "" {
		path = "/etc/krb5.conf"
	}
	cfg, err := krbconfig.Load(path)
	if err != nil {
		return nil, usagef("gssapi: Kerberos configuration %s: %v", path, err)
	}
	name, realm, _ := strings.Cut(k.saslUser, "@")
	if realm == "" {
		realm = cfg.LibDefaults.DefaultRealm
	}
	if name == "" || realm == "" {
		return nil, usagef("gssapi: --sasl-user %q: no realm, and %s has no default_realm", k.saslUser, path)
	}
	var cl *krbclient.Client
	if k.krbKeytab != "" {
		kt, err := keytab.Load(k.krbKeytab)
		if err != nil {
			return nil, usagef("gssapi: --kerberos-keytab %s: %v", k.krbKeytab, err)
		}
		cl = krbclient.NewWithKeytab(name, realm, kt, cfg, krbclient.DisablePAFXFAST(true))
	} else {
		cl = krbclient.NewWithPassword(name, realm, k.saslPassword, cfg, krbclient.DisablePAFXFAST(true))
	}
	if err := cl.Login(); err != nil && !krbNetworkError(err) {
		return nil, fmt.Errorf("gssapi: log in as %s@%s: %w", name, realm, err)
	}
	// A KDC that cannot be reached yet is not the end: franz-go logs in
	// again at each broker connection (AffirmLogin), so the broker check
	// treats it as it treats brokers not reachable yet (produce and tail
	// retry for a while, run keeps trying).
	// One client for every Kafka client of the command (they share the
	// mechanism), kept for the life of the process: closing one Kafka
	// client must not log the others out.
	return kerberos.Auth{Client: cl, Service: k.krbService}.AsMechanism(), nil
}

// krbNetworkError reports whether err is gokrb5's failure to reach the
// KDC, rather than the KDC's refusal.
func krbNetworkError(err error) bool {
	var krbErr krberror.Krberror
	return errors.As(err, &krbErr) && krbErr.RootCause == krberror.NetworkingError
}

// readToken reads an OAuth bearer token file: its content without
// surrounding white space, which must not be empty.
func readToken(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--sasl-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--sasl-token-file %s: empty", file)
	}
	return tok, nil
}

// opts returns the franz-go options for TLS and SASL.
func (k *kafkaFlags) opts() ([]kgo.Opt, error) {
	var opts []kgo.Opt
	tc, err := k.tlsConfig()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	mech, err := k.saslMechanismOpt()
	if err != nil {
		return nil, err
	}
	if mech != nil {
		opts = append(opts, kgo.SASL(mech))
	}
	return opts, nil
}

// tlsConfig is the TLS configuration of the --tls options, nil without
// TLS.
func (k *kafkaFlags) tlsConfig() (*tls.Config, error) {
	if !k.tls && k.tlsCA == "" && k.tlsCert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: k.tlsServerName}
	if k.tlsCA != "" {
		pem, err := os.ReadFile(k.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usagef("--tls-ca %s: no PEM certificates", k.tlsCA)
		}
		tc.RootCAs = pool
	}
	if k.tlsCert != "" || k.tlsKey != "" {
		kp := &keyPairFiles{certFile: k.tlsCert, keyFile: k.tlsKey}
		if _, err := kp.get(nil); err != nil {
			return nil, err
		}
		tc.GetClientCertificate = kp.get
	}
	return tc, nil
}

// keyPairFiles is the client certificate of --tls-cert and --tls-key, read
// again at a TLS handshake (a new broker connection) when either file's
// modification time or size has changed since, so that a certificate
// rotated on disk (cert-manager, a renewal job) is used without a restart.
// A pair that does not load (caught between its two files being
// replaced, say) leaves the last good one in use until the next
// handshake looks again; only the first load's failure is an error.
type keyPairFiles struct {
	certFile, keyFile string

	mu    sync.Mutex
	cert  *tls.Certificate
	stamp [2]fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(file string) fileStamp {
	fi, err := os.Stat(file)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{fi.ModTime(), fi.Size()}
}

// get is tls.Config.GetClientCertificate.
func (kp *keyPairFiles) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	stamp := [2]fileStamp{stampOf(kp.certFile), stampOf(kp.keyFile)}
	if kp.cert != nil && stamp == kp.stamp {
		return kp.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		if kp.cert != nil {
			return kp.cert, nil // the last good pair; the files are looked at again next time
		}
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	kp.cert, kp.stamp = &cert, stamp
	return kp.cert, nil
}

// brokerCheckTimeout bounds kafkaFlags.check.
const brokerCheckTimeout = 15 * time.Second

// check makes sure that cl reaches a broker (kgo.Client.Ping: one request
// to each known broker) before a command relies on it. franz-go retries
// every connection failure, a rejected password or an untrusted
// certificate included, for as long as the context lasts, so without this
// a misconfigured produce or tail waited for ever and then reported only
// its own deadline. Failures that can pass (nothing listens yet, a broker
// restarting) are retried every half second for up to brokerCheckTimeout
// or ctx's end; authentication and certificate failures end it at once.
// The error names the brokers and the cause.
func (k *kafkaFlags) check(ctx context.Context, cl *kgo.Client, brokers []string) error {
	ctx, cancel := context.WithTimeout(ctx, brokerCheckTimeout)
	defer cancel()
	var last error // of the last attempt that ended before ctx did
	for {
		err := cl.Ping(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil && last != nil {
			return last // err is most likely ctx's end cutting a dial short
		}
		if errors.Is(err, io.EOF) && k.saslMechanism != "" {
			// A broker that refuses the credentials may close the
			// connection instead of answering with an error code.
			err = fmt.Errorf("%w (the broker closed the connection: with --sasl-mechanism %s, wrong credentials do that)", err, k.saslMechanism)
		}
		if code, ok := remoteTLSAlert(err); ok && clientCertAlert(code) {
			err = fmt.Errorf("%w (the broker refused this client's certificate: check --tls-cert and --tls-key)", err)
		}
		last = fmt.Errorf("brokers %s: %w", strings.Join(brokers, ","), err)
		if permanentConnError(last) {
			return last
		}
		if k.waiting != nil {
			deadline, _ := ctx.Deadline()
			fmt.Fprintf(k.waiting, "waiting up to %s for %v\n", time.Until(deadline).Round(time.Second), last)
			k.waiting = nil // once
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// checkCluster is check with a client of its own, closed after.
func (k *kafkaFlags) checkCluster(ctx context.Context, kopts []kgo.Opt, brokers []string) error {
	cl, err := kgo.NewClient(append(append([]kgo.Opt(nil), kopts...), kgo.SeedBrokers(brokers...))...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	return k.check(ctx, cl, brokers)
}

// permanentConnError reports whether err is one that asking again will
// not change: SASL authentication refused, a broker certificate that
// does not verify (the TLS client wraps every verification failure, an
// unknown authority or a wrong name, in a CertificateVerificationError),
// or the broker ending the TLS handshake with an alert (remoteTLSAlert):
// no client certificate or one it does not trust, no common protocol
// version or cipher suite; or the Kerberos KDC refusing a ticket.
func permanentConnError(err error) bool {
	var certErr *tls.CertificateVerificationError
	if errors.Is(err, kerr.SaslAuthenticationFailed) || errors.Is(err, kerr.UnsupportedSaslMechanism) ||
		errors.Is(err, kerr.IllegalSaslState) || errors.As(err, &certErr) {
		return true
	}
	// gssapi: the KDC refused a ticket (an unknown service principal, a
	// disabled client); a KDC that cannot be reached is a networking
	// error, which may pass.
	var krbErr krberror.Krberror
	if errors.As(err, &krbErr) && krbErr.RootCause == krberror.KDCError {
		return true
	}
	code, ok := remoteTLSAlert(err)
	return ok && code != alertInternalError && code != alertUserCanceled
}

// TLS alert codes (RFC 8446 section 6) that a peer may send for a
// passing reason; every other alert ending a handshake says that the two
// sides' settings do not fit.
const (
	alertInternalError = 80
	alertUserCanceled  = 90
)

// clientCertAlert reports whether a TLS alert is a server's answer to
// the client's certificate, or to its absence (RFC 8446 section 6.2:
// bad_certificate, certificate_unknown, unknown_ca, access_denied,
// certificate_required; and RFC 5246's certificate_expired and
// certificate_revoked).
func clientCertAlert(code uint8) bool {
	switch code {
	case 42, 44, 45, 46, 48, 49, 116:
		return true
	}
	return false
}

// remoteTLSAlert returns the code of the TLS alert the peer sent, if err
// is one. crypto/tls reports a received fatal alert as a *net.OpError
// with Op "remote error" around its own unexported alert type, a uint8
// holding the RFC 8446 code; it has no exported form for TCP connections
// (tls.AlertError is QUIC's), so the code is read by its kind.
func remoteTLSAlert(err error) (uint8, bool) {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return 0, false
	}
	v := reflect.ValueOf(op.Err)
	if v.Kind() != reflect.Uint8 {
		return 0, false
	}
	return uint8(v.Uint()), true
}

// seeds returns the brokers, or def when none were given.
func (k *kafkaFlags) seeds(def string) []string {
	if len(k.brokers) == 0 {
		return []string{def}
	}
	return k.brokers
}
