package message

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// receivedCases are Received fields as MTAs write them (unfolded), with
// what ParseReceived should read from each.
var receivedCases = []struct {
	mta, field string
	want       Received
}{
	{"Postfix", "from mail.example.com (mail.example.com [192.0.2.1]) by mx.example.net (Postfix) with ESMTPS id 4Xyz12 for <bob@example.net>; Tue, 24 Nov 2026 10:15:00 +0100 (CET)",
		Received{HELO: "mail.example.com", ClientIP: netip.MustParseAddr("192.0.2.1"), By: "mx.example.net", With: "ESMTPS", ID: "4Xyz12", For: "bob@example.net",
			Date: time.Date(2026, 11, 24, 9, 15, 0, 0, time.UTC)}},
	{"Postfix, no reverse DNS, IPv6", "from helo.example (unknown [IPv6:2001:db8::25]) by mx.example.net (Postfix) with ESMTP id 4Abc; Tue, 24 Nov 2026 10:15:00 +0000",
		Received{HELO: "helo.example", ClientIP: netip.MustParseAddr("2001:db8::25"), By: "mx.example.net", With: "ESMTP", ID: "4Abc",
			Date: time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)}},
	{"Exim, HELO differs from reverse DNS", "from rdns.example.org ([198.51.100.7]:54321 helo=mail.example.org) by mx.example.net with esmtps (TLS1.3) tls TLS_AES_256_GCM_SHA384 (Exim 4.96) (envelope-from <bounce@example.org>) id 1pQrSt-000Abc-De for bob@example.net; Tue, 24 Nov 2026 10:15:00 +0000",
		Received{HELO: "mail.example.org", ClientIP: netip.MustParseAddr("198.51.100.7"), By: "mx.example.net", With: "esmtps", ID: "1pQrSt-000Abc-De", For: "bob@example.net",
			EnvelopeFrom: "bounce@example.org", HasEnvelopeFrom: true, Date: time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)}},
	{"Exim, no reverse DNS, null sender", "from [203.0.113.9] (helo=sender.example) by mx.example.net with esmtp (Exim 4.96) (envelope-from <>) id 1pQ; Tue, 24 Nov 2026 10:15:00 +0000",
		Received{HELO: "sender.example", ClientIP: netip.MustParseAddr("203.0.113.9"), By: "mx.example.net", With: "esmtp", ID: "1pQ",
			HasEnvelopeFrom: true, Date: time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)}},
	{"Sendmail", "from mail.example.com (mail.example.com [192.0.2.1]) by mx.example.net (8.17.1/8.17.1) with ESMTP id 5AOAF0x1012345 for <bob@example.net>; Tue, 24 Nov 2026 10:15:00 GMT",
		Received{HELO: "mail.example.com", ClientIP: netip.MustParseAddr("192.0.2.1"), By: "mx.example.net", With: "ESMTP", ID: "5AOAF0x1012345", For: "bob@example.net",
			Date: time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)}},
	{"Gmail", "from mail.example.com (mail.example.com. [192.0.2.1]) by mx.google.com with ESMTPS id a1si123.2026.11.24.02.15.00 for <bob@gmail.com> (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256); Tue, 24 Nov 2026 02:15:00 -0800 (PST)",
		Received{HELO: "mail.example.com", ClientIP: netip.MustParseAddr("192.0.2.1"), By: "mx.google.com", With: "ESMTPS", ID: "a1si123.2026.11.24.02.15.00", For: "bob@gmail.com",
			Date: time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)}},
	{"Microsoft", "from AM0PR01MB1234.eurprd01.prod.exchangelabs.com (2603:10a6:208:1a3::12) by AM0PR01MB5678.eurprd01.prod.exchangelabs.com with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7000.1; Tue, 24 Nov 2026 10:15:00 +0000",
		Received{HELO: "AM0PR01MB1234.eurprd01.prod.exchangelabs.com", ClientIP: netip.MustParseAddr("2603:10a6:208:1a3::12"), By: "AM0PR01MB5678.eurprd01.prod.exchangelabs.com", With: "Microsoft", ID: "15.20.7000.1",
			Date: time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)}},
	{"qmail", "from unknown (HELO mail.example.com) (192.0.2.1) by mx.example.net with SMTP; 24 Nov 2026 10:15:00 -0000",
		Received{HELO: "mail.example.com", ClientIP: netip.MustParseAddr("192.0.2.1"), By: "mx.example.net", With: "SMTP",
			Date: time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)}},
	{"address literal as HELO, IPv4-mapped", "from [IPv6:::ffff:192.0.2.44] (unknown [IPv6:::ffff:192.0.2.44]) by mx.example.net with ESMTP; Tue, 24 Nov 2026 10:15:00 +0000",
		Received{HELO: "[IPv6:::ffff:192.0.2.44]", ClientIP: netip.MustParseAddr("192.0.2.44"), By: "mx.example.net", With: "ESMTP",
			Date: time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)}},
	{"LMTP hop inside the provider", "from mx.example.net by store1.example.net with LMTP id AbCd (Dovecot) for <bob@example.net>; Tue, 24 Nov 2026 10:15:01 +0000",
		Received{HELO: "mx.example.net", By: "store1.example.net", With: "LMTP", ID: "AbCd", For: "bob@example.net",
			Date: time.Date(2026, 11, 24, 10, 15, 1, 0, time.UTC)}},
	{"no date, keywords in capitals", "FROM a.example ([192.0.2.3]) BY b.example WITH SMTP",
		Received{HELO: "a.example", ClientIP: netip.MustParseAddr("192.0.2.3"), By: "b.example", With: "SMTP"}},
	{"no HELO, address glued to the name (AT&T voicemail)", "from  (localhost[127.0.0.1]) by voicemail.cis.att.net (vm2) with SMTP id <2006030121275918800sp93le>; Wed, 1 Mar 2006 21:27:59 +0000",
		Received{ClientIP: netip.MustParseAddr("127.0.0.1"), By: "voicemail.cis.att.net", With: "SMTP", ID: "<2006030121275918800sp93le>",
			Date: time.Date(2006, 3, 1, 21, 27, 59, 0, time.UTC)}},
	{"TCP-info outside a comment (RFC 4409 example)", "from client1.football.example.com  [192.0.2.1] by submitserver.example.com with SUBMISSION; Sat, 12 Jul 2003 04:01:00 +0000",
		Received{HELO: "client1.football.example.com", ClientIP: netip.MustParseAddr("192.0.2.1"), By: "submitserver.example.com", With: "SUBMISSION",
			Date: time.Date(2003, 7, 12, 4, 1, 0, 0, time.UTC)}},
	{"nested comment, quoted-pair, unterminated comment", `from a.example (x (y) \) [192.0.2.5]) by b.example (z`,
		Received{HELO: "a.example", ClientIP: netip.MustParseAddr("192.0.2.5"), By: "b.example"}},
}

func TestParseReceived(t *testing.T) {
	for _, tc := range receivedCases {
		got, err := ParseReceived([]byte(tc.field))
		if err != nil {
			t.Errorf("%s: %v", tc.mta, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.mta, got, tc.want)
		}
	}
	for _, field := range []string{
		"by mx.example.net (Postfix, from userid 1000) id 4Xyz; Tue, 24 Nov 2026 10:15:00 +0000",
		"",
		"(from a.example [192.0.2.1])",
	} {
		if _, err := ParseReceived([]byte(field)); !errors.Is(err, ErrNoFromClause) {
			t.Errorf("%q: err %v, want ErrNoFromClause", field, err)
		}
	}
}

// TestParseReceivedBounded: a field of thousands of words is read up to
// maxReceivedTokens of them, not to its end.
func TestParseReceivedBounded(t *testing.T) {
	long := "from a.example ([192.0.2.1]) " + strings.Repeat("x ", 10*maxReceivedTokens) + "by late.example; Tue, 24 Nov 2026 10:15:00 +0000"
	r, err := ParseReceived([]byte(long))
	if err != nil || r.By != "" || !r.ClientIP.IsValid() || r.Date.IsZero() {
		t.Errorf("%+v %v: want the client and the date, and no By read past the bound", r, err)
	}
}

func FuzzParseReceived(f *testing.F) {
	for _, tc := range receivedCases {
		f.Add([]byte(tc.field))
	}
	f.Add([]byte("from [IPv6:fe80::1%eth0] (helo=x) by y; junk"))
	f.Add([]byte("from ((((((( by"))
	f.Add([]byte("from a ([1.2.3.4]:x [5.6.7.8]) (envelope-from<a@b>) for"))
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := ParseReceived(v)
		if err != nil && !errors.Is(err, ErrNoFromClause) {
			t.Fatalf("error %v", err)
		}
		if r.ClientIP.IsValid() && (r.ClientIP.Is4In6() || r.ClientIP.Zone() != "") {
			t.Fatalf("client address %v: want unmapped, no zone", r.ClientIP)
		}
		if !r.Date.IsZero() && r.Date.Location() != time.UTC {
			t.Fatalf("date %v not UTC", r.Date)
		}
		for _, s := range []string{r.HELO, r.By, r.With, r.ID, r.For, r.EnvelopeFrom} {
			if len(s) > len(v) {
				t.Fatalf("%q longer than the field", s)
			}
		}
	})
}
