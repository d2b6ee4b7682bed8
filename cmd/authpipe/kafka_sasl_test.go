package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/authpipe/authpipe/stages/verdict"
)

// saslBroker is a kfake cluster whose SASL handshake and authentication
// requests are answered here for mechanism, with check judging the
// client's authentication bytes. kfake speaks PLAIN and SCRAM only
// (TestRunKafkaTLSAndSASL uses those), so for OAUTHBEARER and AWS_MSK_IAM
// this control stands in for the broker's side of SASL; all else is
// kfake's. What it tests is the client side: the bytes authpipe sends,
// again at each re-authentication (lifetime, when positive, is the
// session lifetime the broker grants, after which franz-go authenticates
// again), and how a command ends when refused. (The control does not
// refuse a client that skips SASL, as a real broker would.)
func saslBroker(t *testing.T, mechanism string, lifetime time.Duration, check func([]byte) error) string {
	t.Helper()
	return saslExchangeBroker(t, mechanism, lifetime, func(b []byte) ([]byte, error) {
		if err := check(b); err != nil {
			return nil, err
		}
		if mechanism == "AWS_MSK_IAM" {
			return []byte(`{"version":"2020_10_22","request-id":"test"}`), nil
		}
		return nil, nil
	})
}

// saslExchangeBroker is saslBroker for mechanisms of more than one round:
// answer gets the bytes of each SASLAuthenticate request and returns the
// bytes of its response, or the error that refuses the client.
func saslExchangeBroker(t *testing.T, mechanism string, lifetime time.Duration, answer func([]byte) ([]byte, error)) string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.ControlKey(int16(kmsg.SASLHandshake), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.SASLHandshakeRequest)
		resp := r.ResponseKind().(*kmsg.SASLHandshakeResponse)
		resp.SupportedMechanisms = []string{mechanism}
		if r.Mechanism != mechanism {
			resp.ErrorCode = kerr.UnsupportedSaslMechanism.Code
		}
		return resp, nil, true
	})
	c.ControlKey(int16(kmsg.SASLAuthenticate), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.SASLAuthenticateRequest)
		resp := r.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		out, err := answer(r.SASLAuthBytes)
		if err != nil {
			resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
			msg := err.Error()
			resp.ErrorMessage = &msg
			return resp, nil, true
		}
		resp.SessionLifetimeMillis = lifetime.Milliseconds()
		resp.SASLAuthBytes = out
		return resp, nil, true
	})
	return c.ListenAddrs()[0]
}

// verifyThroughBroker runs `run` against the broker with auth; once it is
// ready, calls meanwhile (if any), then produces the example message,
// waits for its verdict and stops run.
func verifyThroughBroker(t *testing.T, auth []string, meanwhile func()) (runLogs *syncBuffer) {
	t.Helper()
	stop, logs := startRun(t, freeAddr(t), append([]string{"--data-dir", t.TempDir(), "--zone", "../../examples/example.zone",
		"--batch-interval", "50ms"}, auth...)...)
	defer func() {
		if code := stop(); code != 0 {
			t.Fatalf("run exit %d:\n%s", code, logs)
		}
	}()
	if meanwhile != nil {
		meanwhile()
	}
	code, _, stderr := cli(t, 20*time.Second, append([]string{"produce", "--ip", "192.0.2.10", "--mail-from", "alice@example.com",
		"../../examples/message.eml"}, auth...)...)
	if code != 0 || !strings.Contains(stderr, "produced 1 message") {
		t.Fatalf("produce: %d %s", code, stderr)
	}
	code, out, stderr := cli(t, 30*time.Second, append([]string{"tail", "--from-beginning", "--count", "1", "--format", "json"}, auth...)...)
	var v verdict.Verdict
	if code != 0 || json.Unmarshal([]byte(strings.TrimSpace(out)), &v) != nil || v.DMARC == nil || v.DMARC.Result != "pass" {
		t.Fatalf("tail: %d %q %s\n%s", code, out, stderr, logs)
	}
	return logs
}

// TestRunKafkaOAuthBearer: --sasl-mechanism oauthbearer sends the token of
// --sasl-token-file (RFC 7628 client response, with --sasl-user as the
// authorization id), reads the file again at each authentication, so a
// rotated token is used without a restart, and a refused token ends a
// command at once with the broker's reason.
func TestRunKafkaOAuthBearer(t *testing.T) {
	var mu sync.Mutex
	valid := "token-1"
	var seen []string
	broker := saslBroker(t, "OAUTHBEARER", time.Second, func(b []byte) error {
		// n,a=ZID,^Aauth=Bearer TOKEN^A^A
		gs2, rest, ok := bytes.Cut(b, []byte("\x01"))
		tok, ok2 := strings.CutPrefix(strings.TrimSuffix(string(rest), "\x01\x01"), "auth=Bearer ")
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, tok)
		switch {
		case !ok || !ok2 || string(gs2) != "n,a=authpipe-verify,":
			return fmt.Errorf("malformed client response %q", b)
		case tok != valid:
			return errors.New("invalid token")
		}
		return nil
	})
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	auth := []string{"--brokers", broker, "--sasl-mechanism", "oauthbearer", "--sasl-token-file", tokenFile, "--sasl-user", "authpipe-verify"}
	// The token rotated while run runs: its connections authenticate
	// again (the broker grants 1 s sessions) with the file's new token,
	// or its verdict never comes.
	verifyThroughBroker(t, auth, func() {
		mu.Lock()
		valid = "token-2"
		mu.Unlock()
		if err := os.WriteFile(tokenFile, []byte("token-2"), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
	})
	mu.Lock()
	n1, n2 := strings.Count(strings.Join(seen, " "), "token-1"), strings.Count(strings.Join(seen, " "), "token-2")
	mu.Unlock()
	t.Logf("authentications: %d with token-1, %d with token-2", n1, n2)
	if n1 == 0 || n2 < 3 {
		t.Fatalf("want run's first connections on token-1 and later ones (run's, produce's, tail's) on token-2: %d, %d", n1, n2)
	}

	// Refused: exit 1 at once, the broker's reason in the message.
	if err := os.WriteFile(tokenFile, []byte("token-old"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, _, stderr := cli(t, 20*time.Second, append([]string{"produce", "--ip", "192.0.2.10", "../../examples/message.eml"}, auth...)...)
	if code != 1 || !strings.Contains(stderr, "invalid token") || time.Since(start) > 10*time.Second {
		t.Fatalf("produce with a refused token: exit %d after %v: %s", code, time.Since(start), stderr)
	}
	// Usage errors: no token file, an empty one, a token file with
	// another mechanism.
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte(" \n"), 0o600)
	for _, args := range [][]string{{"--sasl-mechanism", "oauthbearer"}, {"--sasl-mechanism", "oauthbearer", "--sasl-token-file", empty},
		{"--sasl-mechanism", "plain", "--sasl-token-file", tokenFile}} {
		code, _, stderr := cli(t, 10*time.Second, append([]string{"produce", "--brokers", broker, "../../examples/message.eml"}, args...)...)
		if code == 0 || !strings.Contains(stderr, "token") {
			t.Errorf("produce %v: exit %d %s", args, code, stderr)
		}
	}
}

// TestRunKafkaAWSMSKIAM: --sasl-mechanism aws-msk-iam sends a SigV4-signed
// kafka-cluster:Connect request from the AWS_* credentials in the
// environment (region from AWS_REGION when the broker's name has none),
// which the broker's side here checks by signing it again with the secret
// key; a wrong secret is refused and ends the command at once; no
// credentials at all is a usage error.
func TestRunKafkaAWSMSKIAM(t *testing.T) {
	const keyID, secret, session, region = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-1", "eu-west-1"
	broker := saslBroker(t, "AWS_MSK_IAM", 0, func(b []byte) error { return checkMSKIAM(b, keyID, secret, session, region) })
	isolateAWS(t)
	t.Setenv("AWS_REGION", region)
	t.Setenv("AWS_ACCESS_KEY_ID", keyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	t.Setenv("AWS_SESSION_TOKEN", session)
	auth := []string{"--brokers", broker, "--sasl-mechanism", "aws-msk-iam"}
	verifyThroughBroker(t, auth, nil)

	start := time.Now()
	code, _, stderr := cli(t, 20*time.Second, append([]string{"produce", "--ip", "192.0.2.10", "../../examples/message.eml", "--sasl-password", "wrong"}, auth...)...)
	if code != 1 || !strings.Contains(stderr, "signature") || time.Since(start) > 10*time.Second {
		t.Fatalf("produce with a wrong secret: exit %d after %v: %s", code, time.Since(start), stderr)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	code, _, stderr = cli(t, 10*time.Second, append([]string{"produce", "../../examples/message.eml"}, auth...)...)
	if code != exitUsage || !strings.Contains(stderr, "AWS_ACCESS_KEY_ID") {
		t.Fatalf("produce with half the keys: exit %d %s", code, stderr)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	code, _, stderr = cli(t, 10*time.Second, append([]string{"produce", "../../examples/message.eml"}, auth...)...)
	if code != exitUsage || !strings.Contains(stderr, "no AWS credentials") || !strings.Contains(stderr, "AWS_WEB_IDENTITY_TOKEN_FILE") {
		t.Fatalf("produce without credentials: exit %d %s", code, stderr)
	}
}

// isolateAWS clears the variables that select AWS credentials and points
// HOME at an empty directory, so that a developer's keys or ~/.aws files
// cannot stand in for the ones a test sets up.
func isolateAWS(t *testing.T) {
	t.Helper()
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE",
		"AWS_ROLE_ARN", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", t.TempDir())
}

// TestRunKafkaAWSMSKIAMCredentialProcess: a host outside AWS (an MX
// fleet's own machines) reaches MSK with a profile whose
// credential_process prints temporary credentials, as IAM Roles
// Anywhere's aws_signing_helper does; a script stands in for it.
func TestRunKafkaAWSMSKIAMCredentialProcess(t *testing.T) {
	const keyID, secret, session, region = "ASIAPROCESS", "process-secret", "process-session", "eu-west-1"
	broker := saslBroker(t, "AWS_MSK_IAM", 0, func(b []byte) error { return checkMSKIAM(b, keyID, secret, session, region) })
	isolateAWS(t)
	t.Setenv("AWS_REGION", region)
	dir := os.Getenv("HOME")
	helper := filepath.Join(dir, "signing-helper")
	script := fmt.Sprintf("#!/bin/sh\nprintf '%%s' '{\"Version\":1,\"AccessKeyId\":\"%s\",\"SecretAccessKey\":\"%s\",\"SessionToken\":\"%s\",\"Expiration\":\"%s\"}'\n",
		keyID, secret, session, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	if err := os.WriteFile(helper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, ".aws"), 0o700); err != nil {
		t.Fatal(err)
	}
	config := "[profile msk]\nregion = " + region + "\ncredential_process = " + helper + " credential-process --role-arn arn:aws:iam::123456789012:role/msk\n"
	if err := os.WriteFile(filepath.Join(dir, ".aws", "config"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_PROFILE", "msk")
	logs := verifyThroughBroker(t, []string{"--brokers", broker, "--sasl-mechanism", "aws-msk-iam"}, nil)
	// run says where the credentials came from.
	if l := logs.String(); !strings.Contains(l, `"msg":"aws-msk-iam credentials","source":"credential-process","access_key_id":"`+keyID+`","expires"`) {
		t.Fatalf("no log line of the credentials' source:\n%s", l)
	}

	// A profile named but not there: exit 1, no fall back to another source.
	t.Setenv("AWS_PROFILE", "mks")
	code, _, stderr := cli(t, 10*time.Second, "produce", "../../examples/message.eml", "--brokers", broker, "--sasl-mechanism", "aws-msk-iam")
	if code != 1 || !strings.Contains(stderr, "profile mks") {
		t.Fatalf("produce with a missing profile: exit %d %s", code, stderr)
	}
}

// TestRunKafkaAWSMSKIAMContainerCredentials: with no keys given, run
// takes temporary credentials from the ECS/EKS container credentials
// endpoint (internal/awscreds, which also covers web identity and IMDS)
// and signs with them. The endpoint cannot run here; an httptest server
// on loopback speaks its protocol (as AWS_CONTAINER_CREDENTIALS_FULL_URI
// allows for loopback addresses).
func TestRunKafkaAWSMSKIAMContainerCredentials(t *testing.T) {
	const keyID, secret, session, region, authz = "ASIACONTAINER", "container-secret", "container-session", "eu-west-1", "pod-identity-token"
	var fetched atomic.Int32
	creds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != authz {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		fetched.Add(1)
		fmt.Fprintf(w, `{"AccessKeyId":%q,"SecretAccessKey":%q,"Token":%q,"Expiration":%q}`,
			keyID, secret, session, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	}))
	defer creds.Close()
	broker := saslBroker(t, "AWS_MSK_IAM", 0, func(b []byte) error { return checkMSKIAM(b, keyID, secret, session, region) })
	isolateAWS(t)
	t.Setenv("AWS_REGION", region)
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", creds.URL+"/v1/credentials")
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", authz)
	verifyThroughBroker(t, []string{"--brokers", broker, "--sasl-mechanism", "aws-msk-iam"}, nil)
	if fetched.Load() == 0 {
		t.Fatal("the container endpoint was not asked")
	}

	// Set up but refused: exit 1 with the endpoint's answer, not a usage error.
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong")
	code, _, stderr := cli(t, 10*time.Second, "produce", "../../examples/message.eml", "--brokers", broker, "--sasl-mechanism", "aws-msk-iam")
	if code != 1 || !strings.Contains(stderr, "401") {
		t.Fatalf("produce with a refused container token: exit %d %s", code, stderr)
	}
}

// checkMSKIAM checks an AWS_MSK_IAM authentication payload as MSK would:
// version, action, host, credential scope and session token, and the
// SigV4 signature of the presigned GET / request, computed here from the
// secret key.
func checkMSKIAM(payload []byte, keyID, secret, session, region string) error {
	var kv map[string]string
	if err := json.Unmarshal(payload, &kv); err != nil {
		return fmt.Errorf("payload: %v", err)
	}
	ts := kv["x-amz-date"]
	if len(ts) != len("20060102T150405Z") {
		return fmt.Errorf("x-amz-date %q", ts)
	}
	scope := ts[:8] + "/" + region + "/kafka-cluster/aws4_request"
	switch {
	case kv["version"] != "2020_10_22", kv["action"] != "kafka-cluster:Connect", kv["host"] != "127.0.0.1":
		return fmt.Errorf("version, action or host: %v", kv)
	case kv["x-amz-credential"] != keyID+"/"+scope, kv["x-amz-security-token"] != session, kv["x-amz-signedheaders"] != "host":
		return fmt.Errorf("credential, session token or signed headers: %v", kv)
	}
	q := url.Values{}
	for _, k := range []string{"Action", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-Security-Token", "X-Amz-SignedHeaders"} {
		q.Set(k, kv[strings.ToLower(k)])
	}
	canonical := "GET\n/\n" + strings.ReplaceAll(q.Encode(), "+", "%20") + "\nhost:" + kv["host"] + "\n\nhost\n" + hexSHA256("")
	toSign := "AWS4-HMAC-SHA256\n" + ts + "\n" + scope + "\n" + hexSHA256(canonical)
	key := []byte("AWS4" + secret)
	for _, part := range []string{ts[:8], region, "kafka-cluster", "aws4_request", toSign} {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(part))
		key = m.Sum(nil)
	}
	if want := hex.EncodeToString(key); !hmac.Equal([]byte(want), []byte(kv["x-amz-signature"])) {
		return errors.New("signature does not match")
	}
	if keys := slices.Sorted(maps.Keys(kv)); len(keys) != 11 {
		return fmt.Errorf("fields %v", keys)
	}
	return nil
}

func hexSHA256(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}
