package awscreds

// The AWS endpoints these tests need (STS, the ECS/EKS container
// credentials endpoint, the EC2 instance metadata service) cannot run
// here, so each is an httptest server on loopback speaking the endpoint's
// documented protocol (profile_test.go has the shared files' tests and
// an STS stand-in of its own, which checks SigV4 signatures): real HTTP through the provider's real client, with
// the documented variables pointing at it (AWS_ENDPOINT_URL_STS,
// AWS_CONTAINER_CREDENTIALS_FULL_URI, AWS_EC2_METADATA_SERVICE_ENDPOINT).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// clock is a settable clock for WithClock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func jsonCreds(id string, exp time.Time) string {
	return fmt.Sprintf(`{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":%q,"SecretAccessKey":"secret-%s","Token":"token-%s","Expiration":%q}`,
		id, id, id, exp.Format(time.RFC3339))
}

func TestEnvironment(t *testing.T) {
	p := New(WithEnv(envOf(map[string]string{"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "S", "AWS_SESSION_TOKEN": "T",
		// Set up too, but the environment's keys come first.
		"AWS_WEB_IDENTITY_TOKEN_FILE": "/nonexistent"})))
	c, err := p.Retrieve(context.Background())
	if err != nil || c != (Credentials{AccessKeyID: "AKID", SecretAccessKey: "S", SessionToken: "T", Source: "environment"}) {
		t.Fatalf("got %+v, %v", c, err)
	}
	_, err = New(WithEnv(envOf(map[string]string{"AWS_ACCESS_KEY_ID": "AKID"}))).Retrieve(context.Background())
	if !errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "must both be set") {
		t.Fatalf("key id without secret: %v", err)
	}
}

func TestNoCredentials(t *testing.T) {
	_, err := New(WithEnv(envOf(map[string]string{"AWS_EC2_METADATA_DISABLED": "true"}))).Retrieve(context.Background())
	if !errors.Is(err, ErrNoCredentials) {
		t.Fatalf("got %v, want ErrNoCredentials", err)
	}
}

func TestWebIdentity(t *testing.T) {
	var calls atomic.Int32
	clk := &clock{now: t0}
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		f := r.PostForm
		if f.Get("Action") != "AssumeRoleWithWebIdentity" || f.Get("Version") != "2011-06-15" ||
			f.Get("RoleArn") != "arn:aws:iam::123456789012:role/authpipe" || f.Get("RoleSessionName") != "pod-1" {
			http.Error(w, "unexpected form "+f.Encode(), http.StatusBadRequest)
			return
		}
		if f.Get("WebIdentityToken") != "eyJ.token" {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>bad token</Message></Error></ErrorResponse>`)
			return
		}
		fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <SessionToken>sts-token-%d</SessionToken>
      <SecretAccessKey>sts-secret</SecretAccessKey>
      <Expiration>%s</Expiration>
      <AccessKeyId>ASIASTS</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>`, calls.Load(), clk.Now().Add(time.Hour).Format(time.RFC3339))
	}))
	defer sts.Close()
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("eyJ.token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"AWS_WEB_IDENTITY_TOKEN_FILE": tokFile, "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/authpipe",
		"AWS_ROLE_SESSION_NAME": "pod-1", "AWS_ENDPOINT_URL_STS": sts.URL}
	p := New(WithEnv(envOf(env)), WithClock(clk.Now))
	c, err := p.Retrieve(context.Background())
	if err != nil || c.AccessKeyID != "ASIASTS" || c.SecretAccessKey != "sts-secret" || c.SessionToken != "sts-token-1" ||
		!c.Expires.Equal(t0.Add(time.Hour)) || c.Source != "web-identity" {
		t.Fatalf("got %+v, %v", c, err)
	}
	// Kept until 5 minutes before it expires, then fetched again.
	clk.Set(t0.Add(54 * time.Minute))
	if c, err = p.Retrieve(context.Background()); err != nil || c.SessionToken != "sts-token-1" || calls.Load() != 1 {
		t.Fatalf("before the refresh: %+v, %v, %d calls", c, err, calls.Load())
	}
	clk.Set(t0.Add(56 * time.Minute))
	if c, err = p.Retrieve(context.Background()); err != nil || c.SessionToken != "sts-token-2" || calls.Load() != 2 {
		t.Fatalf("after the refresh: %+v, %v, %d calls", c, err, calls.Load())
	}

	// A rejected token is STS's error, with its document.
	if err := os.WriteFile(tokFile, []byte("expired"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = New(WithEnv(envOf(env)), WithClock(clk.Now)).Retrieve(context.Background())
	if err == nil || !strings.Contains(err.Error(), "InvalidIdentityToken") || !strings.Contains(err.Error(), "400") {
		t.Fatalf("rejected token: %v", err)
	}
	// Set up without a role: an error, not the next source.
	delete(env, "AWS_ROLE_ARN")
	if _, err = New(WithEnv(envOf(env))).Retrieve(context.Background()); err == nil || !strings.Contains(err.Error(), "AWS_ROLE_ARN") {
		t.Fatalf("no role: %v", err)
	}
}

func TestContainer(t *testing.T) {
	clk := &clock{now: t0}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/credentials" || r.Header.Get("Authorization") != "pod-identity-token" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		// ECS answers without Code; IMDS with it.
		fmt.Fprintf(w, `{"AccessKeyId":"ASIACONT","SecretAccessKey":"cs","Token":"ct","Expiration":%q,"RoleArn":"arn:x"}`,
			clk.Now().Add(6*time.Hour).Format(time.RFC3339))
	}))
	defer srv.Close()
	tokFile := filepath.Join(t.TempDir(), "eks-pod-identity-token")
	if err := os.WriteFile(tokFile, []byte("pod-identity-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"AWS_CONTAINER_CREDENTIALS_FULL_URI": srv.URL + "/v1/credentials",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": tokFile}
	c, err := New(WithEnv(envOf(env)), WithClock(clk.Now)).Retrieve(context.Background())
	if err != nil || c.AccessKeyID != "ASIACONT" || c.SessionToken != "ct" || !c.Expires.Equal(t0.Add(6*time.Hour)) || c.Source != "container" {
		t.Fatalf("got %+v, %v", c, err)
	}
	// The token from the variable when there is no file.
	delete(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
	env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "wrong"
	if _, err = New(WithEnv(envOf(env))).Retrieve(context.Background()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong token: %v", err)
	}
	env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "a\r\nX-Injected: 1"
	if _, err = New(WithEnv(envOf(env))).Retrieve(context.Background()); err == nil || !strings.Contains(err.Error(), "line break") {
		t.Fatalf("token with a line break: %v", err)
	}
	// Plain http elsewhere than loopback or the ECS/EKS address is refused
	// before anything is sent.
	for _, u := range []string{"http://credentials.example/v1", "ftp://127.0.0.1/x", "http://169.254.169.254/"} {
		env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = u
		if _, err = New(WithEnv(envOf(env))).Retrieve(context.Background()); err == nil || !strings.Contains(err.Error(), "FULL_URI") {
			t.Errorf("%s: %v", u, err)
		}
	}
	for _, u := range []string{"https://credentials.example/v1", "http://localhost:1/x", "http://[::1]:8/x", "http://169.254.170.23/v1/credentials"} {
		if err := allowedContainerURL(u); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}

// imdsServer is an IMDSv2 stand-in: credentials only with a session token
// from PUT /latest/api/token.
func imdsServer(t *testing.T, clk *clock, fail *atomic.Bool, calls *atomic.Int32) *httptest.Server {
	t.Helper()
	const tok = "imds-session-token"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path == "/latest/api/token" {
			if r.Method != http.MethodPut || r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") == "" {
				http.Error(w, "bad token request", http.StatusBadRequest)
				return
			}
			fmt.Fprint(w, tok)
			return
		}
		if r.Header.Get("X-Aws-Ec2-Metadata-Token") != tok {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/latest/meta-data/iam/security-credentials/":
			fmt.Fprint(w, "authpipe-instance-role")
		case "/latest/meta-data/iam/security-credentials/authpipe-instance-role":
			calls.Add(1)
			fmt.Fprint(w, jsonCreds(fmt.Sprintf("ASIAIMDS%d", calls.Load()), clk.Now().Add(time.Hour)))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestIMDS(t *testing.T) {
	clk := &clock{now: t0}
	var fail atomic.Bool
	var calls atomic.Int32
	srv := imdsServer(t, clk, &fail, &calls)
	p := New(WithEnv(envOf(map[string]string{"AWS_EC2_METADATA_SERVICE_ENDPOINT": srv.URL})), WithClock(clk.Now))
	c, err := p.Retrieve(context.Background())
	if err != nil || c.AccessKeyID != "ASIAIMDS1" || c.SecretAccessKey != "secret-ASIAIMDS1" || c.Source != "imds" {
		t.Fatalf("got %+v, %v", c, err)
	}
	// Due for a refresh while IMDS fails: the cached credentials serve
	// until they expire, then the error.
	fail.Store(true)
	clk.Set(t0.Add(58 * time.Minute))
	if c, err = p.Retrieve(context.Background()); err != nil || c.AccessKeyID != "ASIAIMDS1" {
		t.Fatalf("refresh failed, still valid: %+v, %v", c, err)
	}
	clk.Set(t0.Add(61 * time.Minute))
	if _, err = p.Retrieve(context.Background()); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("refresh failed, expired: %v", err)
	}
	fail.Store(false)
	if c, err = p.Retrieve(context.Background()); err != nil || c.AccessKeyID != "ASIAIMDS2" {
		t.Fatalf("IMDS back: %+v, %v", c, err)
	}

	// Concurrent callers share one fetch.
	clk.Set(t0.Add(3 * time.Hour))
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, err := p.Retrieve(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d credential fetches, want 3", n)
	}
}

func TestIMDSUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there now
	_, err := New(WithEnv(envOf(map[string]string{"AWS_EC2_METADATA_SERVICE_ENDPOINT": url}))).Retrieve(context.Background())
	if !errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("got %v", err)
	}
}

func TestBodyBound(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Repeat(" ", maxBody+1))
	}))
	defer srv.Close()
	_, err := New(WithEnv(envOf(map[string]string{"AWS_CONTAINER_CREDENTIALS_FULL_URI": srv.URL}))).Retrieve(context.Background())
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("got %v", err)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want string // error substring, "" for success
	}{
		{jsonCreds("A", t0), ""},
		{`{"AccessKeyId":"A","SecretAccessKey":"S"}`, ""},
		{`{"Code":"Failed","Message":"no role"}`, `code "Failed"`},
		{`{"AccessKeyId":"A"}`, "without"},
		{`{"AccessKeyId":"A","SecretAccessKey":"S","Expiration":"tomorrow"}`, "expiration"},
		{`[`, "credentials document"},
	} {
		_, err := ParseJSON([]byte(tc.doc))
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseJSON(%s): %v, want %q", tc.doc, err, tc.want)
		}
	}
	// Both STS answers parse; an error document is an error with its
	// code and message.
	for _, tc := range []struct {
		doc  string
		want string // error substring, "" for success
	}{
		{stsAnswer("AssumeRole"), ""},
		{stsAnswer("AssumeRoleWithWebIdentity"), ""},
		{`<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>`, "sts error: AccessDenied"},
		{`<ErrorResponse><Error><Type>Sender</Type><Code>ExpiredToken</Code><Message>The security
		  token included in the request is expired</Message></Error></ErrorResponse>`, "ExpiredToken: The security token included in the request is expired"},
		{`<GetCallerIdentityResponse/>`, "unexpected <GetCallerIdentityResponse>"},
		{`<AssumeRoleResponse><AssumeRoleWithWebIdentityResult/></AssumeRoleResponse>`, "without"},
		{`<a>`, "sts answer"},
	} {
		c, err := ParseSTS([]byte(tc.doc))
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSTS(%s): %v, want %q", tc.doc, err, tc.want)
		}
		if err == nil && (c.AccessKeyID != "A" || c.SessionToken != "T" || !c.Expires.Equal(t0.Add(time.Hour))) {
			t.Errorf("ParseSTS(%s): %+v", tc.doc, c)
		}
	}
}

// FuzzParseJSON: the credentials documents of the container endpoint and
// IMDS are outside data; parsing never panics, and what parses is complete.
func FuzzParseJSON(f *testing.F) {
	f.Add([]byte(jsonCreds("A", t0)))
	f.Add([]byte(`{"Code":"Failed"}`))
	f.Add([]byte(`{"AccessKeyId":"A","SecretAccessKey":"S","Expiration":"2026-01-01T00:00:00+01:00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseJSON(b)
		if err == nil && (c.AccessKeyID == "" || c.SecretAccessKey == "") {
			t.Fatalf("incomplete credentials without an error: %+v", c)
		}
	})
}

// stsAnswer is an STS answer to action (AssumeRole or
// AssumeRoleWithWebIdentity) with credentials A, S, T expiring at t0+1h.
func stsAnswer(action string) string {
	return fmt.Sprintf(`<%sResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><%[1]sResult><Credentials><AccessKeyId>A</AccessKeyId>`+
		`<SecretAccessKey>S</SecretAccessKey><SessionToken>T</SessionToken><Expiration>%s</Expiration>`+
		`</Credentials></%[1]sResult></%[1]sResponse>`, action, t0.Add(time.Hour).Format(time.RFC3339))
}

// FuzzParseSTS: the same for STS's XML answers.
func FuzzParseSTS(f *testing.F) {
	f.Add([]byte(stsAnswer("AssumeRoleWithWebIdentity")))
	f.Add([]byte(stsAnswer("AssumeRole")))
	f.Add([]byte(`<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>`))
	f.Add([]byte(`<ErrorResponse><Error><Type>Sender</Type><Code>ExpiredToken</Code><Message>expired</Message></Error></ErrorResponse>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseSTS(b)
		if err == nil && (c.AccessKeyID == "" || c.SecretAccessKey == "") {
			t.Fatalf("incomplete credentials without an error: %+v", c)
		}
	})
}
