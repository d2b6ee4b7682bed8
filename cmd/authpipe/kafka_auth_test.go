package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/authpipe/authpipe/stages/verdict"
)

// issue makes a certificate from tmpl with a new P-256 key, signed by
// parent's key, or by its own (self-signed) when parent is nil.
func issue(t *testing.T, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// testPKI is a CA that is also the broker's certificate for 127.0.0.1,
// and a client certificate it signed, each written to PEM files.
type testPKI struct {
	caFile, clientCertFile, clientKeyFile string
	server                                tls.Certificate
	ca                                    *x509.Certificate
	caKey                                 *ecdsa.PrivateKey
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caDER, caKey := issue(t, &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "authpipe test broker"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, nil)
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	clientDER, clientKey := issue(t, &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "authpipe"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	keyDER, err := x509.MarshalPKCS8PrivateKey(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	pki := &testPKI{caFile: filepath.Join(dir, "ca.pem"), clientCertFile: filepath.Join(dir, "client.pem"), clientKeyFile: filepath.Join(dir, "client.key"),
		server: tls.Certificate{Certificate: [][]byte{caDER}, PrivateKey: caKey}, ca: ca, caKey: caKey}
	writePEM(t, pki.caFile, "CERTIFICATE", caDER)
	writePEM(t, pki.clientCertFile, "CERTIFICATE", clientDER)
	writePEM(t, pki.clientKeyFile, "PRIVATE KEY", keyDER)
	return pki
}

// TestRunKafkaTLSAndSASL: run, produce and tail join a cluster that takes
// only mutual-TLS connections authenticated with SCRAM-SHA-256 (the kfake
// broker over TCP, with TLS and SASL on), with the CA from --tls-ca, the
// client certificate from --tls-cert and --tls-key, and the password from
// AUTHPIPE_SASL_PASSWORD. A wrong password fails produce with
// exit status 1 and an error that says so; without the CA, produce and run
// stop at once with exit status 1 and the certificate error.
func TestRunKafkaTLSAndSASL(t *testing.T) {
	pki := newTestPKI(t)
	ca := pki.caFile
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(pki.ca)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(&tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs}),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "authpipe", "s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	broker := c.ListenAddrs()[0]
	t.Setenv("AUTHPIPE_SASL_PASSWORD", "s3cret")
	auth := []string{"--brokers", broker, "--tls-ca", ca, "--tls-cert", pki.clientCertFile, "--tls-key", pki.clientKeyFile,
		"--sasl-mechanism", "scram-sha-256", "--sasl-user", "authpipe"}

	stop, logs := startRun(t, freeAddr(t), append([]string{"--data-dir", t.TempDir(), "--zone", "../../examples/example.zone",
		"--batch-interval", "50ms"}, auth...)...)
	code, _, stderr := cli(t, 20*time.Second, append([]string{"produce", "--ip", "192.0.2.10", "--mail-from", "alice@example.com",
		"../../examples/message.eml"}, auth...)...)
	if code != 0 || !strings.Contains(stderr, "produced 1 message") {
		t.Fatalf("produce: %d %s", code, stderr)
	}
	code, out, stderr := cli(t, 30*time.Second, append([]string{"tail", "--from-beginning", "--count", "1", "--format", "json"}, auth...)...)
	if code != 0 {
		t.Fatalf("tail: %d %s", code, stderr)
	}
	var v verdict.Verdict
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &v); err != nil || v.Key != "message.eml" || v.DMARC.Result != "pass" {
		t.Fatalf("tail: %q (%v)", out, err)
	}

	wrong := append([]string{"produce", "--ip", "192.0.2.10", "../../examples/message.eml"}, auth...)
	// kfake closes the connection on a wrong password where Kafka answers
	// SASL_AUTHENTICATION_FAILED, so this waits out the command's
	// deadline (5 s here) and names the likely cause.
	code, _, stderr = cli(t, 5*time.Second, append(wrong, "--sasl-password", "wrong")...)
	stderr0 := stderr
	if code != 1 || !strings.Contains(strings.ToLower(stderr), "sasl") {
		t.Errorf("produce with a wrong password: exit %d, %q; want 1 and an error naming SASL", code, stderr)
	}
	noCA := []string{"produce", "--ip", "192.0.2.10", "--brokers", broker, "--tls", "--sasl-mechanism", "scram-sha-256",
		"--sasl-user", "authpipe", "../../examples/message.eml"}
	code, _, stderr = cli(t, 20*time.Second, noCA...)
	if code != 1 || !strings.Contains(stderr, "certificate") {
		t.Errorf("produce without the CA: exit %d, %q; want 1 and a certificate error", code, stderr)
	}
	t.Logf("wrong password: %sno CA: %s", stderr0, stderr)
	// The broker refusing the client (no client certificate) is as
	// final as the client refusing the broker: exit 1 well inside the
	// 15 s the broker check gives failures that can pass.
	noCert := []string{"produce", "--ip", "192.0.2.10", "--brokers", broker, "--tls-ca", ca, "--sasl-mechanism", "scram-sha-256",
		"--sasl-user", "authpipe", "../../examples/message.eml"}
	start := time.Now()
	code, _, stderr = cli(t, 20*time.Second, noCert...)
	took := time.Since(start)
	if code != 1 || !strings.Contains(stderr, "--tls-cert") || took > 10*time.Second {
		t.Errorf("produce without a client certificate: exit %d after %v, %q; want 1 at once and a hint about the client certificate", code, took, stderr)
	}
	t.Logf("no client certificate (exit %d after %v): %s", code, took.Round(time.Millisecond), stderr)
	// run, too, stops at once on a certificate that does not verify.
	code, _, stderr = cli(t, 10*time.Second, "run", "--http-addr", freeAddr(t), "--data-dir", t.TempDir(), "--zone", "../../examples/example.zone",
		"--brokers", broker, "--tls", "--sasl-mechanism", "scram-sha-256", "--sasl-user", "authpipe")
	if code != 1 || !strings.Contains(stderr, "certificate") {
		t.Errorf("run without the CA: exit %d, %q; want 1 and a certificate error", code, stderr)
	}
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, logs)
	}
}

// TestClientCertificateRotation: the client certificate of --tls-cert and
// --tls-key is read again at a handshake once its files change, so a
// rotated certificate is used by new broker connections without a
// restart; a pair caught half replaced (the new certificate, the old key)
// leaves the last good one in use. Each handshake is a real one, with a
// TLS server on loopback that requires a client certificate from the CA
// and says which it got.
func TestClientCertificateRotation(t *testing.T) {
	pki := newTestPKI(t)
	pool := x509.NewCertPool()
	pool.AddCert(pki.ca)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pki.server}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				_, _ = tc.Write([]byte(tc.ConnectionState().PeerCertificates[0].Subject.CommonName))
			}
			tc.Close()
		}
	}()
	k := kafkaFlags{tlsCA: pki.caFile, tlsCert: pki.clientCertFile, tlsKey: pki.clientKeyFile}
	tc, err := k.tlsConfig()
	if err != nil {
		t.Fatal(err)
	}
	presented := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", l.Addr().String(), tc)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if got := presented(); got != "authpipe" {
		t.Fatalf("first handshake: %q", got)
	}
	// Rotated: a new certificate and key from the same CA.
	der, key := issue(t, &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "authpipe-rotated"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, pki.ca, pki.caKey)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	oldCert, _ := os.ReadFile(pki.clientCertFile)
	writePEM(t, pki.clientCertFile, "CERTIFICATE", der)
	// Half replaced (the new certificate, the old key): the old pair.
	later := time.Now().Add(time.Second)
	os.Chtimes(pki.clientCertFile, later, later)
	if got := presented(); got != "authpipe" {
		t.Fatalf("half-replaced pair: %q, want the last good certificate", got)
	}
	writePEM(t, pki.clientKeyFile, "PRIVATE KEY", keyDER)
	later = later.Add(time.Second)
	os.Chtimes(pki.clientKeyFile, later, later)
	if got := presented(); got != "authpipe-rotated" {
		t.Fatalf("after the rotation: %q", got)
	}
	// A certificate that does not load at the start is an error then.
	os.WriteFile(pki.clientCertFile, oldCert[:len(oldCert)/2], 0o600)
	if _, err := k.tlsConfig(); err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Fatalf("broken certificate at the start: %v", err)
	}
}
