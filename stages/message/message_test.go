package message

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

func TestParseCRLFInPlace(t *testing.T) {
	raw := []byte(crlf("From: a@example.com\nSubject: hi\n there\n\nbody\n"))
	m, err := Parse(raw, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if &m.Raw[0] != &raw[0] {
		t.Error("CRLF input was copied")
	}
	if len(m.Fields) != 2 {
		t.Fatalf("fields = %d", len(m.Fields))
	}
	s := m.Fields[1]
	if s.Name != "Subject" || s.Key != "subject" || string(s.Raw) != "Subject: hi\r\n there\r\n" || string(s.Value) != " hi there" {
		t.Errorf("subject field = %+v", s)
	}
	if string(m.Body) != "body\r\n" || m.BodyOffset != len(raw)-6 {
		t.Errorf("body = %q at %d", m.Body, m.BodyOffset)
	}
	if string(m.Header()) != "From: a@example.com\r\nSubject: hi\r\n there\r\n" {
		t.Errorf("header = %q", m.Header())
	}
	if len(m.From) != 1 || m.From[0].Addr != "a@example.com" || m.FromFields != 1 || m.FromErr != nil {
		t.Errorf("from = %+v %d %v", m.From, m.FromFields, m.FromErr)
	}
}

func TestParseBareLF(t *testing.T) {
	m, err := Parse([]byte("From: a@example.com\nTo: b@example.com\n\nline1\nline2\r\n"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := "From: a@example.com\r\nTo: b@example.com\r\n\r\nline1\r\nline2\r\n"
	if string(m.Raw) != want {
		t.Errorf("raw = %q", m.Raw)
	}
	if string(m.Body) != "line1\r\nline2\r\n" {
		t.Errorf("body = %q", m.Body)
	}
}

func TestParseNoBody(t *testing.T) {
	for _, in := range []string{"From: a@b.example", "From: a@b.example\r\n", "From: a@b.example\n"} {
		m, err := Parse([]byte(in), Limits{})
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if len(m.Fields) != 1 || string(m.Fields[0].Raw) != "From: a@b.example\r\n" || len(m.Body) != 0 || m.Body == nil {
			t.Errorf("%q: fields %q body %q", in, m.Fields, m.Body)
		}
	}
	m, err := Parse([]byte("\r\nbody only"), Limits{})
	if err != nil || len(m.Fields) != 0 || string(m.Body) != "body only" || m.FromFields != 0 || len(m.From) != 0 {
		t.Errorf("empty header: %v %+v", err, m)
	}
}

func TestParseLimits(t *testing.T) {
	var pe *ParseError
	_, err := Parse(make([]byte, 101), Limits{MaxSize: 100})
	if !errors.As(err, &pe) || pe.Kind != "size" {
		t.Errorf("size: %v", err)
	}
	many := strings.Repeat("X-A: b\r\n", 11) + "\r\n"
	if _, err := Parse([]byte(many), Limits{MaxFields: 10}); !errors.As(err, &pe) || pe.Kind != "fields" {
		t.Errorf("fields: %v", err)
	}
	if _, err := Parse([]byte(many), Limits{MaxFields: 11}); err != nil {
		t.Errorf("11 fields at limit 11: %v", err)
	}
	big := "X-A: " + strings.Repeat("x", 100) + "\r\n\r\n"
	if _, err := Parse([]byte(big), Limits{MaxFieldSize: 100}); !errors.As(err, &pe) || pe.Kind != "field-size" {
		t.Errorf("field-size: %v", err)
	}
	// Defaults: 1000 fields pass, 1001 fail.
	if _, err := Parse([]byte(strings.Repeat("X-A: b\r\n", 1000)+"\r\n"), Limits{}); err != nil {
		t.Errorf("1000 fields: %v", err)
	}
	if _, err := Parse([]byte(strings.Repeat("X-A: b\r\n", 1001)+"\r\n"), Limits{}); !errors.As(err, &pe) || pe.Kind != "fields" {
		t.Errorf("1001 fields: %v", err)
	}
}

func TestParseSyntax(t *testing.T) {
	for _, in := range []string{
		" leading: continuation\r\n\r\n",
		"no colon here\r\n\r\n",
		": empty name\r\n\r\n",
		"Bad Name: x\r\n\r\n",
		"From a@b Mon Jan 1\r\nFrom: a@b\r\n\r\n", // mbox separator
	} {
		var pe *ParseError
		if _, err := Parse([]byte(in), Limits{}); !errors.As(err, &pe) || pe.Kind != "syntax" {
			t.Errorf("%q: %v", in, err)
		}
	}
	// WSP before the colon (obs-optional) is accepted, name trimmed.
	m, err := Parse([]byte("Subject : x\r\n\r\n"), Limits{})
	if err != nil || m.Fields[0].Name != "Subject" || string(m.Fields[0].Value) != " x" {
		t.Errorf("obs WSP: %v %+v", err, m)
	}
}

func TestFrom(t *testing.T) {
	cases := []struct {
		in   string
		want []string // Addr values
		dom  string
	}{
		{"a@Example.COM", []string{"a@example.com"}, "example.com"},
		{`"Joe Q. Public" <john.q.public@example.com>`, []string{"john.q.public@example.com"}, "example.com"},
		{`Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>`, []string{"mary@x.test", "jdoe@example.org", "one@y.test"}, "x.test"},
		{`Pete(A nice \) chap) <pete(his account)@silly.test(his host)>`, []string{"pete@silly.test"}, "silly.test"},
		{`A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;`, []string{"c@a.test", "joe@where.test", "jdoe@one.test"}, "a.test"},
		{`"quoted local"@example.net`, []string{`"quoted local"@example.net`}, "example.net"},
		{`<@route.test:user@dom.test>`, []string{"user@dom.test"}, "dom.test"},
		{`Ünïcode <u@bücher.example>`, []string{"u@xn--bcher-kva.example"}, "xn--bcher-kva.example"},
		{` user @ example . com `, []string{"user@example.com"}, "example.com"},
		{`=?utf-8?q?x?= <a@b.test>`, []string{"a@b.test"}, "b.test"},
	}
	for _, c := range cases {
		m, err := Parse([]byte("From: "+c.in+"\r\n\r\n"), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if m.FromErr != nil {
			t.Errorf("%q: %v", c.in, m.FromErr)
			continue
		}
		var got []string
		for _, a := range m.From {
			got = append(got, a.Addr)
		}
		if strings.Join(got, ",") != strings.Join(c.want, ",") || m.From[0].Domain != c.dom {
			t.Errorf("%q: got %q (domain %q)", c.in, got, m.From[0].Domain)
		}
	}
	for _, bad := range []string{"", "no at sign", "a@", "<a@b", "@b.test", "a@b..c", `"unterminated@b.test`, "(comment", "a@b.test c@d.test"} {
		m, err := Parse([]byte("From: "+bad+"\r\n\r\n"), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if m.FromErr == nil || len(m.From) != 0 {
			t.Errorf("%q: want FromErr, got %+v", bad, m.From)
		}
	}
	m, _ := Parse([]byte("From: a@one.test\r\nFrom: b@two.test\r\n\r\n"), Limits{})
	if m.FromFields != 2 || len(m.From) != 2 || m.From[1].Domain != "two.test" {
		t.Errorf("two From fields: %+v", m)
	}
	m, _ = Parse([]byte("To: a@one.test\r\n\r\n"), Limits{})
	if m.FromFields != 0 || m.From != nil || m.FromErr != nil {
		t.Errorf("no From: %+v", m)
	}
}

func TestTraceAndFieldsByKey(t *testing.T) {
	raw := crlf("Return-Path: <a@b>\nReceived: one\nARC-Seal: i=1\nAuthentication-Results: x; dkim=pass\nReceived: two\nARC-Message-Signature: i=1\nFrom: a@b.test\n\n")
	m, err := Parse([]byte(raw), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	tr := m.Trace()
	if len(tr.Received) != 2 || len(tr.ReturnPath) != 1 || len(tr.AuthenticationResults) != 1 || len(tr.ARC) != 2 {
		t.Errorf("trace = %+v", tr)
	}
	if rs := m.FieldsByKey("received"); len(rs) != 2 || string(rs[1].Value) != " two" {
		t.Errorf("FieldsByKey = %+v", rs)
	}
	if m.Count("received") != 2 || m.FieldsByKey("nope") != nil {
		t.Error("Count/FieldsByKey")
	}
}

// checkInvariants verifies the structural promises of Parse.
func checkInvariants(t *testing.T, m *Message) {
	t.Helper()
	if bytes.Contains(m.Raw, []byte("\n")) {
		for i := 0; i < len(m.Raw); i++ {
			if m.Raw[i] == '\n' && (i == 0 || m.Raw[i-1] != '\r') {
				t.Fatalf("bare LF at %d", i)
			}
		}
	}
	var hdr []byte
	for _, f := range m.Fields {
		if !bytes.HasSuffix(f.Raw, []byte("\r\n")) {
			t.Fatalf("field %q lacks CRLF", f.Raw)
		}
		if !bytes.HasPrefix(f.Raw, []byte(f.Name)) || strings.ToLower(f.Name) != f.Key {
			t.Fatalf("field name %q key %q raw %q", f.Name, f.Key, f.Raw)
		}
		if bytes.Contains(f.Value, []byte("\r\n")) {
			t.Fatalf("value %q not unfolded", f.Value)
		}
		hdr = append(hdr, f.Raw...)
	}
	if !bytes.Equal(hdr, m.Header()) {
		t.Fatalf("fields %q != header %q", hdr, m.Header())
	}
	if !bytes.Equal(m.Body, m.Raw[m.BodyOffset:]) {
		t.Fatal("body offset")
	}
	if m.FromFields != m.Count("from") {
		t.Fatal("FromFields")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(crlf("From: a@example.com\nSubject: hi\n there\n\nbody\n")))
	f.Add([]byte("From: \"x\" <a@b.test>\nTo: c@d\n\nbody"))
	f.Add([]byte("From: g:a@b,c@d;\r\n\r\n"))
	f.Add([]byte("X: y"))
	f.Add([]byte("\r\n"))
	f.Add([]byte("\n"))
	f.Add([]byte("A: \r\n \r\n\r\n"))
	f.Add([]byte("From: (c (d) \\) e) a@[1.2.3.4]\r\n\r\n"))
	f.Add([]byte("From: a@b\rc\r\n\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := Parse(raw, Limits{MaxSize: 1 << 20, MaxFields: 200, MaxFieldSize: 4096})
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		checkInvariants(t, m)
		for _, a := range m.From {
			if a.Domain != strings.ToLower(a.Domain) || !strings.HasSuffix(a.Addr, "@"+a.Domain) {
				t.Fatalf("address %+v", a)
			}
		}
	})
}

func TestInvariantsOnSeeds(t *testing.T) {
	m, err := Parse([]byte("A: b\nB: c\n d\n\nx\n"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, m)
}

// Message10KB builds a realistic 10 KB message: a dozen header fields and
// a text body.
func message10KB() []byte {
	var b strings.Builder
	b.WriteString("Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n\tby mx.example.com with ESMTPS id abc123\r\n\tfor <bob@example.com>; Mon, 23 Nov 2026 10:00:00 +0000\r\n")
	b.WriteString("Received: from localhost by mail.example.org; Mon, 23 Nov 2026 09:59:59 +0000\r\n")
	b.WriteString("From: Alice Example <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: Quarterly report and some notes about the meeting\r\n")
	b.WriteString("Date: Mon, 23 Nov 2026 09:59:58 +0000\r\nMessage-ID: <20261123095958.12345@mail.example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	line := "The quick brown fox jumps over the lazy dog while the report is being written.\r\n"
	for b.Len() < 10*1024 {
		b.WriteString(line)
	}
	return []byte(b.String())
}

func BenchmarkParse10KB(b *testing.B) {
	raw := message10KB()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := Parse(raw, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}
