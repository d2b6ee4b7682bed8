package main

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jcmturner/gokrb5/v8/crypto"
	"github.com/jcmturner/gokrb5/v8/gssapi"
	"github.com/jcmturner/gokrb5/v8/iana/keyusage"
	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/krberror"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/service"
	"github.com/jcmturner/gokrb5/v8/types"
)

const krbRealm = "AUTHPIPE.TEST"

// testKDC is a real MIT Kerberos KDC (krb5kdc, from Debian's krb5-kdc and
// krb5-admin-server, which .ci/run installs) serving a fresh realm on a
// loopback port, with three principals: kafka/127.0.0.1 (the broker, keys
// in brokerKeytab), authpipe (password "authpipe-password") and
// authpipe-kt (keys in clientKeytab only).
type testKDC struct {
	krb5conf     string
	brokerKeytab string
	clientKeytab string

	// start starts krb5kdc on the realm and waits until it listens. It
	// may run on any goroutine; the test's cleanup stops the KDC.
	start func() error
}

// startKDC creates the realm and starts its KDC.
func startKDC(t *testing.T) *testKDC {
	t.Helper()
	k := newKDC(t)
	if err := k.start(); err != nil {
		t.Fatal(err)
	}
	return k
}

// newKDC creates the realm, its principals and keytabs, and the
// configuration files, without starting the KDC: until start, a client
// configured with krb5conf finds nothing listening at the KDC's address.
func newKDC(t *testing.T) *testKDC {
	t.Helper()
	var bins [3]string
	for i, name := range []string{"krb5kdc", "kdb5_util", "kadmin.local"} {
		p, err := exec.LookPath(name)
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed: .ci/run installs krb5-kdc and krb5-admin-server", name)
			}
			t.Skipf("%s not installed (apt-get install krb5-kdc krb5-admin-server): Kerberos test skipped", name)
		}
		bins[i] = p
	}
	dir := t.TempDir()
	port := kdcPort(t)
	k := &testKDC{krb5conf: filepath.Join(dir, "krb5.conf"), brokerKeytab: filepath.Join(dir, "kafka.keytab"),
		clientKeytab: filepath.Join(dir, "client.keytab")}
	write := func(path, text string) {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const enctypes = "aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96"
	write(k.krb5conf, fmt.Sprintf(`[libdefaults]
  default_realm = %[1]s
  dns_lookup_kdc = false
  dns_lookup_realm = false
  udp_preference_limit = 1
  default_tkt_enctypes = %[3]s
  default_tgs_enctypes = %[3]s
  permitted_enctypes = %[3]s
[realms]
  %[1]s = {
    kdc = 127.0.0.1:%[2]d
  }
`, krbRealm, port, enctypes))
	kdcConf := filepath.Join(dir, "kdc.conf")
	write(kdcConf, fmt.Sprintf(`[kdcdefaults]
  kdc_listen = 127.0.0.1:%[2]d
  kdc_tcp_listen = 127.0.0.1:%[2]d
[realms]
  %[1]s = {
    database_name = %[3]s/principal
    key_stash_file = %[3]s/stash
    acl_file = %[3]s/kadm5.acl
    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    max_life = 1h
  }
[logging]
  kdc = FILE:%[3]s/kdc.log
`, krbRealm, port, dir))
	env := append(os.Environ(), "KRB5_CONFIG="+k.krb5conf, "KRB5_KDC_PROFILE="+kdcConf)
	run := func(bin string, args ...string) {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", bin, args, err, out)
		}
	}
	run(bins[1], "create", "-s", "-r", krbRealm, "-P", "master-password")
	for _, q := range []string{
		"addprinc -randkey kafka/127.0.0.1",
		"ktadd -k " + k.brokerKeytab + " kafka/127.0.0.1",
		"addprinc -pw authpipe-password authpipe",
		"addprinc -randkey authpipe-kt",
		"ktadd -k " + k.clientKeytab + " authpipe-kt",
	} {
		run(bins[2], "-r", krbRealm, "-q", q)
	}
	k.start = func() error {
		kdc := exec.Command(bins[0], "-n", "-r", krbRealm)
		kdc.Env = env
		logs := &syncBuffer{}
		kdc.Stdout, kdc.Stderr = logs, logs
		if err := kdc.Start(); err != nil {
			return err
		}
		t.Cleanup(func() {
			_ = kdc.Process.Kill()
			_ = kdc.Wait()
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, "kdc.log"))
				t.Logf("krb5kdc output:\n%s\nkdc.log:\n%s", logs, b)
			}
		})
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		for deadline := time.Now().Add(10 * time.Second); ; {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("krb5kdc does not listen on %s: %v\n%s", addr, err, logs)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	}
	return k
}

// gssapiAcceptor is the broker's side of Kafka's SASL/GSSAPI (RFC 4752
// over RFC 4121 tokens), which kfake does not speak: it checks the
// client's AP-REQ with the broker's keytab (gokrb5's service side), offers
// no security layer in a wrap token sealed with the session key, and
// checks the client's sealed answer. Any connection's answer is checked
// against the session keys of every AP-REQ accepted so far, since
// SASLAuthenticate requests do not say which connection they came on.
func gssapiAcceptor(t *testing.T, brokerKeytab string) func([]byte) ([]byte, error) {
	kt, err := keytab.Load(brokerKeytab)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var keys []types.EncryptionKey
	return func(b []byte) ([]byte, error) {
		if len(b) > 0 && b[0] == 0x60 { // an initial context token (RFC 2743 3.1)
			ap, err := krb5MechToken(b)
			if err != nil {
				return nil, err
			}
			var req messages.APReq
			if err := req.Unmarshal(ap); err != nil {
				return nil, fmt.Errorf("AP-REQ: %v", err)
			}
			// The ticket and the authenticator, checked as
			// service.VerifyAPREQ checks them, without its replay
			// cache: that cache is process-wide and keys on the
			// client and the authenticator's time to the microsecond,
			// which gokrb5's client does not keep distinct between
			// connections, so two of a command's connections opened
			// in the same microsecond read as a replay (seen under
			// -race). The JDK's replay cache, which Kafka's brokers
			// use, also keys on a hash of the whole authenticator,
			// whose random subkey and sequence number tell two such
			// connections apart.
			st := service.NewSettings(kt, service.DecodePAC(false))
			if ok, err := req.Verify(kt, st.MaxClockSkew(), st.ClientAddress(), st.KeytabPrincipal()); !ok {
				return nil, fmt.Errorf("AP-REQ refused: %v", err)
			}
			key := req.Ticket.DecryptedEncPart.Key
			et, err := crypto.GetEtype(key.KeyType)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			keys = append(keys, key)
			mu.Unlock()
			// Security layers offered: none (bit 1), maximum message size
			// 0 (RFC 4752 3.1).
			wt := gssapi.WrapToken{Flags: 0x01, EC: uint16(et.GetHMACBitLength() / 8), Payload: []byte{1, 0, 0, 0}}
			if err := wt.SetCheckSum(key, keyusage.GSSAPI_ACCEPTOR_SEAL); err != nil {
				return nil, err
			}
			return wt.Marshal()
		}
		var wt gssapi.WrapToken
		if err := wt.Unmarshal(b, false); err != nil {
			return nil, fmt.Errorf("wrap token: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, k := range keys {
			if ok, _ := wt.Verify(k, keyusage.GSSAPI_INITIATOR_SEAL); ok {
				if len(wt.Payload) < 4 || wt.Payload[0]&1 == 0 {
					return nil, fmt.Errorf("client chose security layer %x, not none", wt.Payload)
				}
				return nil, nil
			}
		}
		return nil, errors.New("wrap token is not sealed with an accepted session key")
	}
}

// krb5MechToken returns the Kerberos AP-REQ of a GSS-API initial context
// token: [APPLICATION 0] length, the Kerberos V5 mechanism OID, token ID
// 01 00 (RFC 2743 3.1, RFC 4121 4.1).
func krb5MechToken(b []byte) ([]byte, error) {
	if len(b) < 2 || b[0] != 0x60 {
		return nil, errors.New("not a GSS-API initial context token")
	}
	n, off := int(b[1]), 2
	if n&0x80 != 0 {
		l := n & 0x7f
		if l == 0 || l > 4 || len(b) < 2+l {
			return nil, errors.New("GSS-API token length")
		}
		n = 0
		for _, c := range b[2 : 2+l] {
			n = n<<8 | int(c)
		}
		off = 2 + l
	}
	b = b[off:]
	if n != len(b) {
		return nil, fmt.Errorf("GSS-API token length %d, %d octets follow", n, len(b))
	}
	krb5 := []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02}
	if !bytes.HasPrefix(b, krb5) || !bytes.HasPrefix(b[len(krb5):], []byte{1, 0}) {
		return nil, errors.New("not a Kerberos V5 AP-REQ token")
	}
	return b[len(krb5)+2:], nil
}

// TestRunKafkaKerberos runs the pipeline against a broker that
// authenticates it with SASL/GSSAPI, with tickets from a real KDC: the
// principal's key from a password, then from a keytab; and checks that a
// wrong password and a missing principal end the command with the reason.
func TestRunKafkaKerberos(t *testing.T) {
	kdc := startKDC(t)
	broker := saslExchangeBroker(t, "GSSAPI", 0, gssapiAcceptor(t, kdc.brokerKeytab))
	base := []string{"--brokers", broker, "--sasl-mechanism", "gssapi", "--kerberos-config", kdc.krb5conf}

	verifyThroughBroker(t, append([]string{"--sasl-user", "authpipe", "--sasl-password", "authpipe-password"}, base...), nil)
	verifyThroughBroker(t, append([]string{"--sasl-user", "authpipe-kt@" + krbRealm, "--kerberos-keytab", kdc.clientKeytab}, base...), nil)

	start := time.Now()
	code, _, stderr := cli(t, 20*time.Second, append([]string{"produce", "../../examples/message.eml", "--sasl-user", "authpipe",
		"--sasl-password", "wrong"}, base...)...)
	if code != 1 || !strings.Contains(stderr, "log in as authpipe@"+krbRealm) || time.Since(start) > 10*time.Second {
		t.Fatalf("produce with a wrong password: exit %d after %v: %s", code, time.Since(start), stderr)
	}
	code, _, stderr = cli(t, 10*time.Second, append([]string{"produce", "../../examples/message.eml", "--sasl-password", "x"}, base...)...)
	if code != exitUsage || !strings.Contains(stderr, "--sasl-user") {
		t.Fatalf("produce without a principal: exit %d %s", code, stderr)
	}
	// A service name without a principal: the KDC's refusal ends the
	// command at once, not after the brokers' retry window.
	start = time.Now()
	code, _, stderr = cli(t, 20*time.Second, append([]string{"produce", "../../examples/message.eml", "--sasl-user", "authpipe",
		"--sasl-password", "authpipe-password", "--kerberos-service", "kafka-other"}, base...)...)
	if code != 1 || !strings.Contains(stderr, "KDC_ERR_S_PRINCIPAL_UNKNOWN") || time.Since(start) > 10*time.Second {
		t.Fatalf("produce with an unknown service principal: exit %d after %v: %s", code, time.Since(start), stderr)
	}
}

// TestRunKerberosKDCLate: run started while its KDC does not answer yet
// neither ends nor gives up: its login at start and franz-go's at each
// connection wait as they do for brokers not reachable yet, and once the
// KDC is up (3 s later) the message is verified.
func TestRunKerberosKDCLate(t *testing.T) {
	kdc := newKDC(t)
	broker := saslExchangeBroker(t, "GSSAPI", 0, gssapiAcceptor(t, kdc.brokerKeytab))
	started := make(chan error, 1)
	timer := time.AfterFunc(3*time.Second, func() { started <- kdc.start() })
	defer timer.Stop() // a test that failed before: no KDC to start after it
	verifyThroughBroker(t, []string{"--brokers", broker, "--sasl-mechanism", "gssapi", "--kerberos-config", kdc.krb5conf,
		"--sasl-user", "authpipe", "--sasl-password", "authpipe-password"}, nil)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
}

// TestKerberosKDCNotReachable: a KDC that does not answer yet is no
// reason to stop at start (the broker check then retries, and run keeps
// trying, as with brokers not reachable yet); a KDC that refuses is.
func TestKerberosKDCNotReachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	conf := filepath.Join(t.TempDir(), "krb5.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("[libdefaults]\n  default_realm = %s\n  udp_preference_limit = 1\n[realms]\n  %s = {\n    kdc = %s\n  }\n",
		krbRealm, krbRealm, addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	k := &kafkaFlags{saslMechanism: "gssapi", saslUser: "authpipe", saslPassword: "p", krbConfig: conf, krbService: "kafka"}
	if m, err := k.saslMechanismOpt(); err != nil || m == nil {
		t.Fatalf("KDC not reachable: %v, %v", m, err)
	}
	if !krbNetworkError(krberror.New(krberror.NetworkingError, "x")) || krbNetworkError(krberror.New(krberror.KDCError, "x")) ||
		krbNetworkError(errors.New("x")) {
		t.Fatal("krbNetworkError")
	}
}

func TestKrb5MechToken(t *testing.T) {
	oid := []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02}
	inner := append(append(append([]byte{}, oid...), 1, 0), bytes.Repeat([]byte{0xab}, 300)...)
	long := append([]byte{0x60, 0x82, byte(len(inner) >> 8), byte(len(inner))}, inner...)
	if ap, err := krb5MechToken(long); err != nil || len(ap) != 300 {
		t.Fatalf("long form: %d octets, %v", len(ap), err)
	}
	for _, bad := range [][]byte{nil, {0x60}, {0x61, 0}, long[:len(long)-1], {0x60, 0x80}, {0x60, 2, 1, 0}} {
		if _, err := krb5MechToken(bad); err == nil {
			t.Errorf("%x: no error", bad)
		}
	}
}

// kdcPort returns a port of 127.0.0.1 free for both TCP and UDP, below the
// kernel's ephemeral range: krb5kdc binds both, and a port the kernel
// picked for TCP could meanwhile be any UDP socket's ephemeral port (the
// DNS clients of the tests running beside this one open many); once
// krb5kdc failed so ("Cannot bind server socket", a CI run of session 22).
func kdcPort(t *testing.T) int {
	t.Helper()
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				lo = n
			}
		}
	}
	for range 100 {
		port := 10000 + rand.IntN(lo-10000)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return port
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}
