package awscreds

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSignV4 checks the signer against AWS's published example (IAM User
// Guide, "Signed Signature Version 4 Requests Examples"): a POST to IAM's
// ListUsers with the example credentials.
func TestSignV4(t *testing.T) {
	const body = "Action=ListUsers&Version=2010-05-08"
	req, err := http.NewRequest(http.MethodPost, "http://iam.amazonaws.com/", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-type", "application/x-www-form-urlencoded; charset=utf-8")
	c := Credentials{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
	signV4(req, []byte(body), c, "us-east-1", "iam", time.Date(2011, 9, 9, 23, 36, 0, 0, time.UTC))
	const want = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/iam/aws4_request, " +
		"SignedHeaders=content-type;host;x-amz-date, Signature=ced6826de92d2bdeed8f846f0bf508e8559e98e4b0199114b84c54174deb456c"
	if got := req.Header.Get("Authorization"); got != want {
		t.Fatalf("Authorization:\n got %s\nwant %s", got, want)
	}
	if got := req.Header.Get("X-Amz-Date"); got != "20110909T233600Z" {
		t.Fatalf("X-Amz-Date %q", got)
	}
	if req.Header.Get("X-Amz-Security-Token") != "" {
		t.Fatal("a security token without a session token")
	}

	// Temporary credentials: the session token is sent and signed.
	req.Header = http.Header{"Content-Type": {"application/x-www-form-urlencoded; charset=utf-8"}}
	c.SessionToken = "session-token"
	signV4(req, []byte(body), c, "us-east-1", "iam", time.Date(2011, 9, 9, 23, 36, 0, 0, time.UTC))
	if got := req.Header.Get("Authorization"); req.Header.Get("X-Amz-Security-Token") != "session-token" || got == want ||
		!strings.Contains(got, "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, ") {
		t.Fatalf("with a session token: %s, token %q", got, req.Header.Get("X-Amz-Security-Token"))
	}
}

// TestSignV4Query: the AWS Signature Version 4 test suite's
// get-vanilla-query-order-key-case (parameters sorted by name).
func TestSignV4Query(t *testing.T) {
	req, err := http.NewRequest(http.MethodGet, "https://example.amazonaws.com/?Param2=value2&Param1=value1", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := Credentials{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
	signV4(req, nil, c, "us-east-1", "service", time.Date(2015, 8, 30, 12, 36, 0, 0, time.UTC))
	const want = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, " +
		"SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
	if got := req.Header.Get("Authorization"); got != want {
		t.Fatalf("Authorization:\n got %s\nwant %s", got, want)
	}
}
