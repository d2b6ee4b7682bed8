package awscreds

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// signV4 signs req, whose body is body, with AWS Signature Version 4 for
// region and service at time t, as the IAM User Guide's "Create a signed
// AWS API request" (and its "Signed Signature Version 4 Requests
// Examples") has it: it sets X-Amz-Date, X-Amz-Security-Token when c has a
// session token, and Authorization. Every header in req.Header is signed,
// with host (from req.Host, else req.URL.Host); the payload is hashed
// (SHA-256), not sent unsigned.
func signV4(req *http.Request, body []byte, c Credentials, region, service string, t time.Time) {
	amzDate := t.UTC().Format("20060102T150405Z")
	req.Header.Set("X-Amz-Date", amzDate)
	if c.SessionToken != "" {
		req.Header.Set("X-Amz-Security-Token", c.SessionToken)
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	headers := map[string]string{"host": canonicalHeaderValue(host)}
	for k, vs := range req.Header {
		vals := make([]string, len(vs))
		for i, v := range vs {
			vals[i] = canonicalHeaderValue(v)
		}
		headers[strings.ToLower(k)] = strings.Join(vals, ",")
	}
	names := make([]string, 0, len(headers))
	for k := range headers {
		names = append(names, k)
	}
	slices.Sort(names)
	signed := strings.Join(names, ";")

	var canon strings.Builder
	canon.WriteString(req.Method + "\n")
	path := req.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	canon.WriteString(path + "\n")
	canon.WriteString(canonicalQuery(req.URL.RawQuery) + "\n")
	for _, k := range names {
		canon.WriteString(k + ":" + headers[k] + "\n")
	}
	canon.WriteString("\n" + signed + "\n" + hexSHA256(body))

	scope := amzDate[:8] + "/" + region + "/" + service + "/aws4_request"
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hexSHA256([]byte(canon.String()))
	key := []byte("AWS4" + c.SecretAccessKey)
	for _, part := range []string{amzDate[:8], region, service, "aws4_request"} {
		key = hmacSHA256(key, part)
	}
	sig := hex.EncodeToString(hmacSHA256(key, toSign))
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+c.AccessKeyID+"/"+scope+
		", SignedHeaders="+signed+", Signature="+sig)
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// canonicalHeaderValue trims a header value and folds each run of spaces
// inside it into one.
func canonicalHeaderValue(v string) string {
	return strings.Join(strings.Fields(v), " ")
}

// canonicalQuery sorts the query's parameters by name, then value, each
// URI-encoded as SigV4 wants (RFC 3986 unreserved characters kept, every
// other octet %XX, space as %20).
func canonicalQuery(raw string) string {
	if raw == "" {
		return ""
	}
	q, _ := url.ParseQuery(raw)
	var pairs [][2]string
	for k, vs := range q {
		for _, v := range vs {
			pairs = append(pairs, [2]string{uriEncode(k), uriEncode(v)})
		}
	}
	slices.SortFunc(pairs, func(a, b [2]string) int {
		if c := strings.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return strings.Compare(a[1], b[1])
	})
	out := make([]string, len(pairs))
	for i, kv := range pairs {
		out[i] = kv[0] + "=" + kv[1]
	}
	return strings.Join(out, "&")
}

func uriEncode(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}
