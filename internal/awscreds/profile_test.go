package awscreds

// The shared files are real files under t.TempDir(), found through HOME
// (or AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE) as on a server. STS
// is an httptest server on loopback (AWS_ENDPOINT_URL_STS) that checks
// each AssumeRole's SigV4 signature as STS would, with the secret keys it
// knows: those of the test's profiles and those it issued itself.
//
// credential_process runs a real executable: a shell script written to
// t.TempDir() with mode 0755. A script rather than the test binary
// re-executed in a helper mode: it is what operators configure (a path
// and arguments, exec'ed without a shell), it needs no TestMain or flag
// plumbing, and each test writes the behaviour it needs (sleep, exit
// status, stderr, oversized output) in one line of sh. The tests that
// write scripts do not run in parallel, so no concurrent fork holds a
// script open for writing when it is executed (ETXTBSY).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// home writes the credentials and config files (when not empty) under a
// new HOME and returns it.
func home(t *testing.T, credentials, config string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, ".aws"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"credentials": credentials, "config": config} {
		if content == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, ".aws", name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func retrieve(t *testing.T, env map[string]string, opts ...Option) (Credentials, error) {
	t.Helper()
	return New(append([]Option{WithEnv(envOf(env))}, opts...)...).Retrieve(context.Background())
}

func TestProfileStaticKeys(t *testing.T) {
	const creds = `# written by aws configure
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = default/secret+key
; a comment
[both]
aws_access_key_id=AKIDCREDFILE
aws_secret_access_key=credfile-secret

[crlf]` + "\r\nAWS_Access_Key_ID = AKIDCRLF\r\naws_secret_access_key  =  crlf-secret  \r\n"
	const config = `[default]
region = eu-west-1
s3 =
  max_concurrent_requests = 20
  aws_access_key_id = NOTAKEY
[profile x]
aws_access_key_id = AKIDCONFIG
aws_secret_access_key = config-secret
aws_session_token = config-token
[profile both]
aws_access_key_id = AKIDLOSES
aws_session_token = both-token
region = eu-central-1
[sso-session corp]
sso_start_url = https://corp.awsapps.com/start
[services dev]
sts =
  endpoint_url = http://localhost:1
`
	h := home(t, creds, config)
	for _, tc := range []struct {
		profile string
		want    Credentials
	}{
		{"", Credentials{AccessKeyID: "AKIDDEFAULT", SecretAccessKey: "default/secret+key", Source: "shared-config"}},
		// A config-file-only profile.
		{"x", Credentials{AccessKeyID: "AKIDCONFIG", SecretAccessKey: "config-secret", SessionToken: "config-token", Source: "shared-config"}},
		// The credentials file's keys win; the config file's others stay.
		{"both", Credentials{AccessKeyID: "AKIDCREDFILE", SecretAccessKey: "credfile-secret", SessionToken: "both-token", Source: "shared-config"}},
		// Keys are case-insensitive; CRLF lines, spaces around values.
		{"crlf", Credentials{AccessKeyID: "AKIDCRLF", SecretAccessKey: "crlf-secret", Source: "shared-config"}},
	} {
		c, err := retrieve(t, map[string]string{"HOME": h, "AWS_PROFILE": tc.profile})
		if err != nil || c != tc.want {
			t.Errorf("profile %q: got %+v, %v; want %+v", tc.profile, c, err, tc.want)
		}
	}

	// The environment's keys come first.
	c, err := retrieve(t, map[string]string{"HOME": h, "AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "env"})
	if err != nil || c.AccessKeyID != "AKIDENV" || c.Source != "environment" {
		t.Fatalf("environment over the files: %+v, %v", c, err)
	}

	// The files where the variables say, ~ for HOME; [profile default].
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "conf"), []byte("[profile default]\naws_access_key_id = AKIDVAR\naws_secret_access_key = v\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = retrieve(t, map[string]string{"HOME": other, "AWS_CONFIG_FILE": "~/conf", "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(other, "none")})
	if err != nil || c.AccessKeyID != "AKIDVAR" {
		t.Fatalf("AWS_CONFIG_FILE: %+v, %v", c, err)
	}

	// One key without the other: set up by half, naming profile and file.
	h = home(t, "[default]\naws_access_key_id = AKIDHALF\n", "")
	_, err = retrieve(t, map[string]string{"HOME": h})
	if !errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "profile default") ||
		!strings.Contains(err.Error(), filepath.Join(h, ".aws", "credentials")) || !strings.Contains(err.Error(), "must both be set") {
		t.Fatalf("half the keys: %v", err)
	}
}

func TestProfileSelection(t *testing.T) {
	// Neither file has a default profile with credentials (an empty
	// setting is none): the chain goes on, here to a container endpoint
	// stand-in.
	cont := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, jsonCreds("ASIACONT", t0.Add(time.Hour)))
	}))
	defer cont.Close()
	h := home(t, "[other]\naws_access_key_id = A\naws_secret_access_key = S\n", "[default]\nregion = eu-west-1\naws_access_key_id =\n[profile regiononly]\nregion = eu-west-1\n")
	env := map[string]string{"HOME": h, "AWS_CONTAINER_CREDENTIALS_FULL_URI": cont.URL}
	c, err := retrieve(t, env)
	if err != nil || c.Source != "container" {
		t.Fatalf("no default profile: %+v, %v", c, err)
	}
	// AWS_PROFILE picks another profile.
	env["AWS_PROFILE"] = "other"
	if c, err = retrieve(t, env); err != nil || c.AccessKeyID != "A" || c.Source != "shared-config" {
		t.Fatalf("AWS_PROFILE=other: %+v, %v", c, err)
	}
	// An explicit profile that is in neither file is an error, not the
	// next source, and not "no credentials".
	env["AWS_PROFILE"] = "typo"
	_, err = retrieve(t, env)
	if err == nil || errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "profile typo (AWS_PROFILE): not in") {
		t.Fatalf("missing profile: %v", err)
	}
	// An explicit profile without credential settings: nothing to fetch.
	env["AWS_PROFILE"] = "regiononly"
	if _, err = retrieve(t, env); !errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "no credential settings") {
		t.Fatalf("profile without credentials: %v", err)
	}
	// Without any file, an explicit profile is missing too.
	if _, err = retrieve(t, map[string]string{"AWS_PROFILE": "x"}); err == nil || errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "none found") {
		t.Fatalf("no files: %v", err)
	}
	// ErrNoCredentials's hint names the files.
	if _, err = retrieve(t, map[string]string{"HOME": h, "AWS_EC2_METADATA_DISABLED": "true"}); !errors.Is(err, ErrNoCredentials) ||
		!strings.Contains(err.Error(), "~/.aws/credentials") {
		t.Fatalf("no source: %v", err)
	}

	// A file at the default path that cannot be read (here a directory,
	// as the tests may run as root) counts as absent, as in the Go SDK:
	// HOME need not be the user's. Named by the variable, it is an error.
	h = t.TempDir()
	if err := os.MkdirAll(filepath.Join(h, ".aws", "credentials"), 0o700); err != nil {
		t.Fatal(err)
	}
	env = map[string]string{"HOME": h, "AWS_EC2_METADATA_DISABLED": "true"}
	if _, err = retrieve(t, env); !errors.Is(err, ErrNoCredentials) {
		t.Fatalf("unreadable default credentials file: %v", err)
	}
	env["AWS_PROFILE"] = "x"
	if _, err = retrieve(t, env); err == nil || !strings.Contains(err.Error(), "not read: ") || !strings.Contains(err.Error(), "is a directory") {
		t.Fatalf("unreadable default credentials file, AWS_PROFILE: %v", err)
	}
	env["AWS_SHARED_CREDENTIALS_FILE"] = "~/.aws/credentials"
	if _, err = retrieve(t, env); err == nil || errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "AWS_SHARED_CREDENTIALS_FILE: ") {
		t.Fatalf("unreadable AWS_SHARED_CREDENTIALS_FILE: %v", err)
	}

	// A file that does not parse, or is too large, is an error.
	for _, tc := range []struct{ creds, want string }{
		{"[default]\naws_access_key_id\n", "line 2: want key = value"},
		{"aws_access_key_id = A\n", "line 1: aws_access_key_id outside a section"},
		{"[default\n", "line 1: section header without ]"},
		{"[default]\n" + strings.Repeat("#", maxFile), "larger than"},
	} {
		if _, err = retrieve(t, map[string]string{"HOME": home(t, tc.creds, ""), "AWS_EC2_METADATA_DISABLED": "true"}); err == nil ||
			errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.40q: %v, want %q", tc.creds, err, tc.want)
		}
	}
}

// script writes an executable shell script and returns its path.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "credential helper.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCredentialProcess(t *testing.T) {
	clk := &clock{now: t0}
	calls := filepath.Join(t.TempDir(), "calls")
	// Each run appends its argument to the calls file and answers with
	// the run's number in the key id.
	helper := script(t, fmt.Sprintf(`echo "$1" >> '%s'
n=$(wc -l < '%[1]s' | tr -d ' ')
printf '{"Version": 1, "AccessKeyId": "ASIAPROC%%s", "SecretAccessKey": "proc-secret", "SessionToken": "proc-token", "Expiration": "%s"}\n' "$n"`,
		calls, t0.Add(time.Hour).Format(time.RFC3339)))
	h := home(t, "", fmt.Sprintf("[default]\ncredential_process = %q \"role arn\"  --region 'eu-west-1'\n", helper))
	p := New(WithEnv(envOf(map[string]string{"HOME": h})), WithClock(clk.Now))
	c, err := p.Retrieve(context.Background())
	want := Credentials{AccessKeyID: "ASIAPROC1", SecretAccessKey: "proc-secret", SessionToken: "proc-token", Expires: t0.Add(time.Hour), Source: "credential-process"}
	if err != nil || c != want {
		t.Fatalf("got %+v, %v", c, err)
	}
	// Kept until 5 minutes before it expires, then the command runs again.
	clk.Set(t0.Add(54 * time.Minute))
	if c, err = p.Retrieve(context.Background()); err != nil || c.AccessKeyID != "ASIAPROC1" {
		t.Fatalf("before the refresh: %+v, %v", c, err)
	}
	clk.Set(t0.Add(56 * time.Minute))
	if c, err = p.Retrieve(context.Background()); err != nil || c.AccessKeyID != "ASIAPROC2" {
		t.Fatalf("after the refresh: %+v, %v", c, err)
	}
	if b, err := os.ReadFile(calls); err != nil || string(b) != "role arn\nrole arn\n" {
		t.Fatalf("runs: %q, %v", b, err)
	}

	for _, tc := range []struct {
		name, body, want string
		timeout          time.Duration
	}{
		{"no expiration", `echo '{"Version":1,"AccessKeyId":"A","SecretAccessKey":"S"}'`, "", 0},
		{"bad JSON", `echo 'AccessKeyId=A'`, "output: invalid character", 0},
		{"version 2", `echo '{"Version":2,"AccessKeyId":"A","SecretAccessKey":"S"}'`, "Version 2, want 1", 0},
		{"incomplete", `echo '{"Version":1,"AccessKeyId":"A"}'`, "without an access key id or secret", 0},
		{"bad expiration", `echo '{"Version":1,"AccessKeyId":"A","SecretAccessKey":"S","Expiration":"soon"}'`, "expiration", 0},
		{"exit status", "echo 'no role for you' >&2\nexit 3", "exit status 3: no role for you", 0},
		{"timeout", "echo 'waiting' >&2\nexec sleep 30", "stopped after", 300 * time.Millisecond},
		{"output too large", "head -c 70000 /dev/zero", "output larger than 65536 octets", 0},
	} {
		h := home(t, "", fmt.Sprintf("[profile p]\ncredential_process = %q\n", script(t, tc.body)))
		ctx := context.Background()
		if tc.timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, tc.timeout)
			defer cancel()
		}
		start := time.Now()
		c, err := New(WithEnv(envOf(map[string]string{"HOME": h, "AWS_PROFILE": "p"}))).Retrieve(ctx)
		switch {
		case tc.want == "" && (err != nil || !c.Expires.IsZero() || c.AccessKeyID != "A"):
			t.Errorf("%s: %+v, %v", tc.name, c, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "profile p")):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		case time.Since(start) > 10*time.Second:
			t.Errorf("%s: took %s", tc.name, time.Since(start))
		}
	}
	// The command line must split.
	h = home(t, "", "[default]\ncredential_process = \"/bin/true\n")
	if _, err := retrieve(t, map[string]string{"HOME": h}); err == nil || !strings.Contains(err.Error(), "unterminated") {
		t.Fatalf("unterminated quote: %v", err)
	}
}

func TestSplitCommand(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  ", nil},
		{"/usr/local/bin/aws_signing_helper credential-process --certificate /etc/pki/c.pem", []string{"/usr/local/bin/aws_signing_helper", "credential-process", "--certificate", "/etc/pki/c.pem"}},
		{`"/opt/my tools/helper"  a	b`, []string{"/opt/my tools/helper", "a", "b"}},
		{`x "a \"b\" \\ \c" 'd "e" \f'`, []string{"x", `a "b" \ \c`, `d "e" \f`}},
		{`--name=""x'y'`, []string{"--name=xy"}},
		{`""`, []string{""}},
	} {
		got, err := splitCommand(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{`"a`, `a 'b`, `"a\"`} {
		if _, err := splitCommand(in); err == nil {
			t.Errorf("splitCommand(%q): no error", in)
		}
	}
}

// stsCall is what the STS stand-in saw of one call.
type stsCall struct {
	Action, RoleArn, RoleSessionName, ExternalID, DurationSeconds string
	KeyID, Region, Token                                          string // the signer's access key id, scope region, session token
}

// stsStandIn answers AssumeRole (checking its SigV4 signature with the
// secret keys it knows) and AssumeRoleWithWebIdentity.
type stsStandIn struct {
	*httptest.Server
	clk *clock

	mu    sync.Mutex
	keys  map[string]Credentials // access key id → credentials it knows
	calls []stsCall
	n     int
}

func newSTS(t *testing.T, clk *clock, known ...Credentials) *stsStandIn {
	s := &stsStandIn{clk: clk, keys: map[string]Credentials{}}
	for _, c := range known {
		s.keys[c.AccessKeyID] = c
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *stsStandIn) Calls() []stsCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]stsCall(nil), s.calls...)
}

func stsFail(w http.ResponseWriter, status int, code, msg string) {
	w.WriteHeader(status)
	fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>`+
		`<Code>%s</Code><Message>%s</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>`, code, msg)
}

func (s *stsStandIn) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		stsFail(w, http.StatusBadRequest, "MalformedInput", err.Error())
		return
	}
	f, err := url.ParseQuery(string(body))
	if err != nil || r.Method != http.MethodPost || r.URL.Path != "/" {
		stsFail(w, http.StatusBadRequest, "MalformedInput", "bad request")
		return
	}
	call := stsCall{Action: f.Get("Action"), RoleArn: f.Get("RoleArn"), RoleSessionName: f.Get("RoleSessionName"),
		ExternalID: f.Get("ExternalId"), DurationSeconds: f.Get("DurationSeconds")}
	if f.Get("Version") != "2011-06-15" {
		stsFail(w, http.StatusBadRequest, "InvalidAction", "version")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch call.Action {
	case "AssumeRole":
		signer, region, err := s.verify(r, body)
		if err != nil {
			stsFail(w, http.StatusForbidden, "SignatureDoesNotMatch", err.Error())
			return
		}
		call.KeyID, call.Region, call.Token = signer.AccessKeyID, region, signer.SessionToken
	case "AssumeRoleWithWebIdentity":
		if r.Header.Get("Authorization") != "" || f.Get("WebIdentityToken") != "eyJ.token" {
			stsFail(w, http.StatusBadRequest, "InvalidIdentityToken", "bad token")
			return
		}
	default:
		stsFail(w, http.StatusBadRequest, "InvalidAction", call.Action)
		return
	}
	s.calls = append(s.calls, call)
	if strings.HasSuffix(call.RoleArn, "/denied") {
		stsFail(w, http.StatusForbidden, "AccessDenied", "User: arn:aws:iam::123456789012:user/mx is not\n  authorized to perform: sts:AssumeRole on resource: "+call.RoleArn)
		return
	}
	s.n++
	c := Credentials{AccessKeyID: fmt.Sprintf("ASIAROLE%d", s.n), SecretAccessKey: fmt.Sprintf("role-secret-%d", s.n),
		SessionToken: fmt.Sprintf("role-token-%d", s.n), Expires: s.clk.Now().Add(time.Hour)}
	s.keys[c.AccessKeyID] = c
	fmt.Fprintf(w, `<%sResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <%[1]sResult>
    <Credentials>
      <AccessKeyId>%s</AccessKeyId>
      <SecretAccessKey>%s</SecretAccessKey>
      <SessionToken>%s</SessionToken>
      <Expiration>%s</Expiration>
    </Credentials>
    <AssumedRoleUser><Arn>%s/%s</Arn><AssumedRoleId>AROA:%[7]s</AssumedRoleId></AssumedRoleUser>
  </%[1]sResult>
</%[1]sResponse>`, call.Action, c.AccessKeyID, c.SecretAccessKey, c.SessionToken, c.Expires.Format(time.RFC3339), call.RoleArn, call.RoleSessionName)
}

// verify checks r's SigV4 signature as STS does: the signer's secret key
// (and session token, which must be sent and signed when the key has
// one) recomputes the Authorization header from the signed headers.
func (s *stsStandIn) verify(r *http.Request, body []byte) (Credentials, string, error) {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "AWS4-HMAC-SHA256 Credential=")
	if !ok {
		return Credentials{}, "", fmt.Errorf("authorization %q", auth)
	}
	cred, rest, _ := strings.Cut(rest, ", SignedHeaders=")
	signedHeaders, _, _ := strings.Cut(rest, ", Signature=")
	scope := strings.Split(cred, "/") // key id, date, region, service, aws4_request
	if len(scope) != 5 || scope[3] != "sts" || scope[4] != "aws4_request" {
		return Credentials{}, "", fmt.Errorf("credential scope %q", cred)
	}
	c, ok := s.keys[scope[0]]
	if !ok {
		return Credentials{}, "", fmt.Errorf("unknown access key %s", scope[0])
	}
	when, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil || !when.Equal(s.clk.Now().Truncate(time.Second)) {
		return Credentials{}, "", fmt.Errorf("x-amz-date %q, want the clock's time", r.Header.Get("X-Amz-Date"))
	}
	if c.SessionToken != "" && (r.Header.Get("X-Amz-Security-Token") != c.SessionToken || !strings.Contains(signedHeaders, "x-amz-security-token")) {
		return Credentials{}, "", errors.New("the session token is missing or not signed")
	}
	for _, h := range []string{"content-type", "host", "x-amz-date"} {
		if !strings.Contains(";"+signedHeaders+";", ";"+h+";") {
			return Credentials{}, "", fmt.Errorf("%s not signed (%s)", h, signedHeaders)
		}
	}
	req, err := http.NewRequest(r.Method, "http://"+r.Host+r.URL.RequestURI(), nil)
	if err != nil {
		return Credentials{}, "", err
	}
	for _, h := range strings.Split(signedHeaders, ";") {
		if h != "host" {
			req.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	signV4(req, body, c, scope[2], "sts", when)
	if req.Header.Get("Authorization") != auth {
		return Credentials{}, "", errors.New("the request signature we calculated does not match the signature you provided")
	}
	return c, scope[2], nil
}

func TestAssumeRoleSourceProfile(t *testing.T) {
	clk := &clock{now: t0}
	base := Credentials{AccessKeyID: "AKIDBASE", SecretAccessKey: "base-secret", SessionToken: "base-token"}
	sts := newSTS(t, clk, base)
	// mx → (source_profile) hop → (source_profile) base, static keys
	// with a session token: two AssumeRole calls, the second signed with
	// the first's temporary credentials.
	h := home(t, "[base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = base-secret\naws_session_token = base-token\n",
		`[profile mx]
role_arn = arn:aws:iam::123456789012:role/msk-producer
source_profile = hop
role_session_name = mx1
external_id = authpipe-external
duration_seconds = 3600
region = eu-west-1
[profile hop]
role_arn = arn:aws:iam::210987654321:role/hop
source_profile = base
`)
	env := map[string]string{"HOME": h, "AWS_PROFILE": "mx", "AWS_ENDPOINT_URL_STS": sts.URL}
	p := New(WithEnv(envOf(env)), WithClock(clk.Now))
	c, err := p.Retrieve(context.Background())
	want := Credentials{AccessKeyID: "ASIAROLE2", SecretAccessKey: "role-secret-2", SessionToken: "role-token-2", Expires: t0.Add(time.Hour), Source: "assume-role"}
	if err != nil || c != want {
		t.Fatalf("got %+v, %v", c, err)
	}
	wantCalls := []stsCall{
		{Action: "AssumeRole", RoleArn: "arn:aws:iam::210987654321:role/hop", RoleSessionName: fmt.Sprintf("authpipe-%d", t0.UnixNano()),
			KeyID: "AKIDBASE", Region: "us-east-1", Token: "base-token"},
		{Action: "AssumeRole", RoleArn: "arn:aws:iam::123456789012:role/msk-producer", RoleSessionName: "mx1", ExternalID: "authpipe-external",
			DurationSeconds: "3600", KeyID: "ASIAROLE1", Region: "eu-west-1", Token: "role-token-1"},
	}
	if got := sts.Calls(); !reflect.DeepEqual(got, wantCalls) {
		t.Fatalf("STS calls:\n got %+v\nwant %+v", got, wantCalls)
	}
	// Refreshed through the whole chain before it expires.
	clk.Set(t0.Add(56 * time.Minute))
	if c, err = p.Retrieve(context.Background()); err != nil || c.AccessKeyID != "ASIAROLE4" || len(sts.Calls()) != 4 {
		t.Fatalf("after the refresh: %+v, %v, %d calls", c, err, len(sts.Calls()))
	}

	// source_profile naming the profile itself: its own keys; the region
	// from AWS_REGION over the profile's.
	h = home(t, "", "[default]\nrole_arn = arn:aws:iam::123456789012:role/self\nsource_profile = default\nregion = eu-west-1\n"+
		"aws_access_key_id = AKIDBASE\naws_secret_access_key = base-secret\naws_session_token = base-token\n")
	c, err = New(WithEnv(envOf(map[string]string{"HOME": h, "AWS_ENDPOINT_URL_STS": sts.URL, "AWS_REGION": "ap-southeast-2"})), WithClock(clk.Now)).Retrieve(context.Background())
	calls := sts.Calls()
	if last := calls[len(calls)-1]; err != nil || c.Source != "assume-role" || last.RoleArn != "arn:aws:iam::123456789012:role/self" ||
		last.KeyID != "AKIDBASE" || last.Region != "ap-southeast-2" {
		t.Fatalf("self as source: %+v, %v, %+v", c, err, last)
	}
}

func TestAssumeRoleErrors(t *testing.T) {
	clk := &clock{now: t0}
	sts := newSTS(t, clk, Credentials{AccessKeyID: "AKIDBASE", SecretAccessKey: "base-secret"})
	const base = "[base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = base-secret\n"
	var chain strings.Builder
	for i := 1; i <= maxProfileChain; i++ {
		fmt.Fprintf(&chain, "[profile p%d]\nrole_arn = arn:aws:iam::123456789012:role/p%d\nsource_profile = p%d\n", i, i, i+1)
	}
	const role = "role_arn = arn:aws:iam::123456789012:role/r\n"
	config := chain.String() + `
[profile a]
` + role + `source_profile = b
[profile b]
` + role + `source_profile = a
[profile mfa]
` + role + `source_profile = base
mfa_serial = arn:aws:iam::123456789012:mfa/operator
[profile sso]
sso_session = corp
sso_account_id = 123456789012
sso_role_name = MSKProducer
[profile viasso]
` + role + `source_profile = sso
[profile denied]
role_arn = arn:aws:iam::123456789012:role/denied
source_profile = base
[profile lost]
` + role + `source_profile = nowhere
[profile sourceless]
` + role + `
[profile both]
` + role + `source_profile = base
credential_source = Environment
[profile badsource]
` + role + `credential_source = Ec2Metadata
[profile norole]
source_profile = base
[profile badduration]
` + role + `source_profile = base
duration_seconds = 1h
[sso-session corp]
sso_start_url = https://corp.awsapps.com/start
`
	h := home(t, base, config)
	for _, tc := range []struct {
		profile, want string
		noCreds       bool // wraps ErrNoCredentials
	}{
		{"p1", "source_profile chain p1 → p2 → p3 → p4 → p5 → p6… longer than 5 profiles", false},
		{"a", "source_profile cycle a → b → a", false},
		{"mfa", "mfa_serial", false},
		{"sso", "IAM Identity Center (SSO) profiles are not supported; use credential_process = aws configure export-credentials --profile sso --format process", false},
		{"viasso", "profile viasso → source_profile sso", false},
		{"denied", "403 Forbidden: AccessDenied: User: arn:aws:iam::123456789012:user/mx is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/denied", false},
		{"lost", "profile lost → source_profile nowhere: not in", false},
		{"sourceless", "role_arn needs source_profile, credential_source or web_identity_token_file", true},
		{"both", "exclude each other", false},
		{"badsource", `credential_source "Ec2Metadata": want Environment, Ec2InstanceMetadata or EcsContainer`, false},
		{"norole", "need role_arn", false},
		{"badduration", `duration_seconds "1h"`, false},
	} {
		_, err := retrieve(t, map[string]string{"HOME": h, "AWS_PROFILE": tc.profile, "AWS_ENDPOINT_URL_STS": sts.URL}, WithClock(clk.Now))
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrNoCredentials) != tc.noCreds {
			t.Errorf("profile %s: %v, want %q", tc.profile, err, tc.want)
		}
	}
	// A chain of exactly maxProfileChain profiles is fine.
	var short strings.Builder
	for i := 1; i < maxProfileChain; i++ {
		fmt.Fprintf(&short, "[profile p%d]\nrole_arn = arn:aws:iam::123456789012:role/p%d\nsource_profile = p%d\n", i, i, i+1)
	}
	h = home(t, strings.ReplaceAll(base, "[base]", fmt.Sprintf("[p%d]", maxProfileChain)), short.String())
	if c, err := retrieve(t, map[string]string{"HOME": h, "AWS_PROFILE": "p1", "AWS_ENDPOINT_URL_STS": sts.URL}, WithClock(clk.Now)); err != nil || c.Source != "assume-role" {
		t.Fatalf("a chain of %d profiles: %+v, %v", maxProfileChain, c, err)
	}
	// No region and no AWS_ENDPOINT_URL_STS.
	h = home(t, base, "[default]\n"+role+"source_profile = base\n")
	if _, err := retrieve(t, map[string]string{"HOME": h}); err == nil || !strings.Contains(err.Error(), "set AWS_REGION") {
		t.Fatalf("no region: %v", err)
	}
}

func TestProfileWebIdentity(t *testing.T) {
	clk := &clock{now: t0}
	sts := newSTS(t, clk)
	h := home(t, "", "[profile eks]\nrole_arn = arn:aws:iam::123456789012:role/pod\nweb_identity_token_file = ~/token\nrole_session_name = pod-1\n")
	if err := os.WriteFile(filepath.Join(h, "token"), []byte("eyJ.token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := retrieve(t, map[string]string{"HOME": h, "AWS_PROFILE": "eks", "AWS_ENDPOINT_URL_STS": sts.URL}, WithClock(clk.Now))
	if err != nil || c.Source != "web-identity" || c.AccessKeyID != "ASIAROLE1" || !c.Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("got %+v, %v", c, err)
	}
	want := []stsCall{{Action: "AssumeRoleWithWebIdentity", RoleArn: "arn:aws:iam::123456789012:role/pod", RoleSessionName: "pod-1"}}
	if got := sts.Calls(); !reflect.DeepEqual(got, want) {
		t.Fatalf("STS calls %+v", got)
	}
	// A token STS refuses: its error document, readable.
	if err := os.WriteFile(filepath.Join(h, "token"), []byte("expired"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = retrieve(t, map[string]string{"HOME": h, "AWS_PROFILE": "eks", "AWS_ENDPOINT_URL_STS": sts.URL}, WithClock(clk.Now))
	if err == nil || !strings.Contains(err.Error(), "profile eks") || !strings.Contains(err.Error(), "400 Bad Request: InvalidIdentityToken: bad token") {
		t.Fatalf("refused token: %v", err)
	}
}

func TestProfileCredentialSource(t *testing.T) {
	clk := &clock{now: t0}
	sts := newSTS(t, clk, Credentials{AccessKeyID: "AKIDENV", SecretAccessKey: "env-secret", SessionToken: "env-token"})
	h := home(t, "", `[profile env]
role_arn = arn:aws:iam::123456789012:role/from-env
credential_source = Environment
[profile ecs]
role_arn = arn:aws:iam::123456789012:role/from-ecs
credential_source = EcsContainer
[profile ec2]
role_arn = arn:aws:iam::123456789012:role/from-ec2
credential_source = Ec2InstanceMetadata
[profile hop]
role_arn = arn:aws:iam::123456789012:role/hop
source_profile = env
`)
	// The environment's keys are the role's source, not the credentials.
	env := map[string]string{"HOME": h, "AWS_PROFILE": "env", "AWS_ENDPOINT_URL_STS": sts.URL, "AWS_REGION": "eu-west-1",
		"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "env-secret", "AWS_SESSION_TOKEN": "env-token"}
	c, err := retrieve(t, env, WithClock(clk.Now))
	last := func() stsCall { c := sts.Calls(); return c[len(c)-1] }
	if err != nil || c.Source != "assume-role" || c.AccessKeyID != "ASIAROLE1" || last().KeyID != "AKIDENV" || last().Token != "env-token" {
		t.Fatalf("credential_source Environment: %+v, %v, %+v", c, err, sts.Calls())
	}
	// Also at the end of a source_profile chain.
	env["AWS_PROFILE"] = "hop"
	if c, err = retrieve(t, env, WithClock(clk.Now)); err != nil || c.AccessKeyID != "ASIAROLE3" || last().RoleArn != "arn:aws:iam::123456789012:role/hop" {
		t.Fatalf("through source_profile: %+v, %v", c, err)
	}
	// Without the keys: an error, not the next source.
	env["AWS_PROFILE"] = "env"
	delete(env, "AWS_ACCESS_KEY_ID")
	delete(env, "AWS_SECRET_ACCESS_KEY")
	if _, err = retrieve(t, env, WithClock(clk.Now)); err == nil || !strings.Contains(err.Error(), "credential_source Environment") {
		t.Fatalf("credential_source Environment without keys: %v", err)
	}

	// The container endpoint's and IMDS's credentials as the source.
	var fail atomic.Bool
	var imdsCalls atomic.Int32
	imds := imdsServer(t, clk, &fail, &imdsCalls)
	cont := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, jsonCreds("ASIACONT", clk.Now().Add(time.Hour)))
	}))
	defer cont.Close()
	sts.mu.Lock()
	sts.keys["ASIACONT"] = Credentials{AccessKeyID: "ASIACONT", SecretAccessKey: "secret-ASIACONT", SessionToken: "token-ASIACONT"}
	sts.keys["ASIAIMDS1"] = Credentials{AccessKeyID: "ASIAIMDS1", SecretAccessKey: "secret-ASIAIMDS1", SessionToken: "token-ASIAIMDS1"}
	sts.mu.Unlock()
	env = map[string]string{"HOME": h, "AWS_ENDPOINT_URL_STS": sts.URL, "AWS_CONTAINER_CREDENTIALS_FULL_URI": cont.URL,
		"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.URL}
	for profile, key := range map[string]string{"ecs": "ASIACONT", "ec2": "ASIAIMDS1"} {
		env["AWS_PROFILE"] = profile
		if c, err = retrieve(t, env, WithClock(clk.Now)); err != nil || c.Source != "assume-role" || last().KeyID != key {
			t.Fatalf("credential_source of %s: %+v, %v, %+v", profile, c, err, last())
		}
	}
	fail.Store(true)
	env["AWS_PROFILE"] = "ec2"
	if _, err = retrieve(t, env, WithClock(clk.Now)); err == nil || errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "credential_source Ec2InstanceMetadata") {
		t.Fatalf("IMDS down: %v", err)
	}
}

func TestParseINI(t *testing.T) {
	got, err := parseINI([]byte("# c\n[ a ]\nK = v = w\n  nested = x\nk2: v2 ; not a comment\n[b] ; c\n\n[a]\nk3=\n"))
	want := []iniSection{{"a", map[string]string{"k": "v = w", "k2": "v2 ; not a comment", "k3": ""}}, {"b", map[string]string{}}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, %v", got, err)
	}
	for _, in := range []string{"[]\n", "[a] x\n", "[a]\n= v\n", "  k = v\n"} {
		if _, err := parseINI([]byte(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

// FuzzParseINI: the shared files are outside data; parsing never panics,
// what parses is well formed (names and keys not empty, keys lowercase,
// values trimmed), and writing it out again parses to the same sections.
func FuzzParseINI(f *testing.F) {
	f.Add([]byte("[default]\naws_access_key_id = A\naws_secret_access_key = S\n"))
	f.Add([]byte("# c\n[profile x]\nregion=eu-west-1\ns3 =\n  max_concurrent_requests = 20\n; c\n[sso-session s]\nsso_start_url: https://x\n"))
	f.Add([]byte("[a] # c\r\nK = v = w\r\n[a]\nk2=\n"))
	f.Add([]byte("k = v\n"))
	f.Add([]byte("[a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sections, err := parseINI(b)
		if err != nil {
			return
		}
		var out strings.Builder
		for _, s := range sections {
			if s.name == "" || s.name != strings.TrimSpace(s.name) || strings.ContainsAny(s.name, "]\n") {
				t.Fatalf("section name %q", s.name)
			}
			fmt.Fprintf(&out, "[%s]\n", s.name)
			for k, v := range s.kv {
				if k == "" || k != strings.ToLower(k) || k != strings.TrimSpace(k) || v != strings.TrimSpace(v) || strings.Contains(k+v, "\n") {
					t.Fatalf("section %q: key %q, value %q", s.name, k, v)
				}
				fmt.Fprintf(&out, "%s = %s\n", k, v)
			}
		}
		again, err := parseINI([]byte(out.String()))
		if err != nil || !reflect.DeepEqual(again, sections) {
			t.Fatalf("written out and parsed again:\n%s\n%+v, %v\nwant %+v", out.String(), again, err, sections)
		}
	})
}

// FuzzParseProcess: a credential_process's output is outside data too.
func FuzzParseProcess(f *testing.F) {
	f.Add([]byte(`{"Version":1,"AccessKeyId":"A","SecretAccessKey":"S","SessionToken":"T","Expiration":"2026-11-24T13:00:00Z"}`))
	f.Add([]byte(`{"Version":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseProcess(b)
		if err == nil && (c.AccessKeyID == "" || c.SecretAccessKey == "") {
			t.Fatalf("incomplete credentials without an error: %+v", c)
		}
	})
}
