// Package awscreds finds AWS credentials where the AWS SDKs' default chain
// looks for them, for the aws-msk-iam SASL mechanism (Amazon MSK IAM
// access control), without the SDK: static keys from the environment, a
// web identity token exchanged with STS (IAM roles for service accounts on
// EKS), the container credentials endpoint (ECS task roles, EKS Pod
// Identity), and the EC2 instance metadata service (IMDSv2, instance
// profiles). Temporary credentials are kept until shortly before they
// expire and fetched again then.
//
// The sources and the environment variables that select them follow the
// AWS SDKs and Tools Reference Guide ("Standardized credential providers")
// and the service documentation:
//   - environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional
//     AWS_SESSION_TOKEN;
//   - web identity: AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, optional
//     AWS_ROLE_SESSION_NAME; STS AssumeRoleWithWebIdentity (an unsigned
//     call) at https://sts.REGION.amazonaws.com (AWS_REGION), or
//     AWS_ENDPOINT_URL_STS;
//   - container: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (on
//     169.254.170.2) or AWS_CONTAINER_CREDENTIALS_FULL_URI (https, or a
//     loopback or the ECS/EKS link-local address), with the Authorization
//     header from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE or
//     AWS_CONTAINER_AUTHORIZATION_TOKEN;
//   - instance metadata: IMDSv2 (a session token from PUT /latest/api/token,
//     then the role's credentials), at http://169.254.169.254 or
//     AWS_EC2_METADATA_SERVICE_ENDPOINT; off with
//     AWS_EC2_METADATA_DISABLED=true.
//
// The first source whose variables are set is the one used; a source that
// is set up and fails is an error, not a reason to try the next (as the
// SDKs do), so a broken role is reported rather than hidden behind an
// instance profile. Shared credentials and config files (~/.aws) are not
// read.
package awscreds

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// Credentials are one set of AWS credentials. Expires is zero for keys
// that do not expire (static keys from the environment).
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expires         time.Time
	Source          string // "environment", "web-identity", "container" or "imds"
}

const (
	// refreshBefore: temporary credentials are fetched again this long
	// before they expire (the SDKs use 5 to 15 minutes; STS and IMDS
	// hand out credentials for an hour or more, and rotate them 5
	// minutes or more before the end).
	refreshBefore = 5 * time.Minute
	// requestTimeout bounds each HTTP exchange with a credential source.
	requestTimeout = 5 * time.Second
	// maxBody bounds the response bodies read from a source.
	maxBody = 64 << 10

	imdsDefault      = "http://169.254.169.254"
	containerDefault = "http://169.254.170.2"
	imdsTokenTTL     = "21600" // seconds; the most IMDS grants
)

// Provider finds credentials and keeps them until they are due for a
// refresh. It is safe for concurrent use; concurrent callers share one
// fetch.
type Provider struct {
	getenv func(string) string
	client *http.Client // no proxy: link-local endpoints must not go through one
	now    func() time.Time

	mu     sync.Mutex
	cached Credentials
}

// Option configures a Provider.
type Option func(*Provider)

// WithEnv sets where the provider reads its environment variables
// (default os.Getenv).
func WithEnv(getenv func(string) string) Option { return func(p *Provider) { p.getenv = getenv } }

// WithClock sets the clock that decides when credentials are due for a
// refresh (default time.Now).
func WithClock(now func() time.Time) Option { return func(p *Provider) { p.now = now } }

// New returns a Provider.
func New(opts ...Option) *Provider {
	p := &Provider{
		getenv: os.Getenv,
		client: &http.Client{Transport: &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}},
		now:    time.Now,
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// ErrNoCredentials is wrapped by the errors that mean no source is set up
// (or one is set up by half): nothing to fetch, rather than a fetch that
// failed.
var ErrNoCredentials = errors.New("no AWS credentials")

// Retrieve returns credentials: the cached ones while they are not due for
// a refresh, else fresh ones from the first source set up. If the refresh
// fails while the cached credentials are still valid, those are returned.
func (p *Provider) Retrieve(ctx context.Context) (Credentials, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	c := p.cached
	if c.AccessKeyID != "" && (c.Expires.IsZero() || now.Before(c.Expires.Add(-refreshBefore))) {
		return c, nil
	}
	fresh, err := p.fetch(ctx)
	if err != nil {
		if c.AccessKeyID != "" && now.Before(c.Expires) {
			return c, nil
		}
		return Credentials{}, err
	}
	p.cached = fresh
	return fresh, nil
}

// sources says what could have been set up, for ErrNoCredentials.
const sources = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, " +
	"or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or AWS_CONTAINER_CREDENTIALS_FULL_URI"

func (p *Provider) fetch(ctx context.Context) (Credentials, error) {
	env := p.getenv
	switch {
	case env("AWS_ACCESS_KEY_ID") != "" || env("AWS_SECRET_ACCESS_KEY") != "":
		c := Credentials{AccessKeyID: env("AWS_ACCESS_KEY_ID"), SecretAccessKey: env("AWS_SECRET_ACCESS_KEY"),
			SessionToken: env("AWS_SESSION_TOKEN"), Source: "environment"}
		if c.AccessKeyID == "" || c.SecretAccessKey == "" {
			return Credentials{}, fmt.Errorf("awscreds: %w: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set", ErrNoCredentials)
		}
		return c, nil
	case env("AWS_WEB_IDENTITY_TOKEN_FILE") != "":
		return p.webIdentity(ctx)
	case env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") != "" || env("AWS_CONTAINER_CREDENTIALS_FULL_URI") != "":
		return p.container(ctx)
	case strings.EqualFold(env("AWS_EC2_METADATA_DISABLED"), "true"):
		return Credentials{}, fmt.Errorf("awscreds: %w: %s, and the EC2 instance metadata service is off (AWS_EC2_METADATA_DISABLED)", ErrNoCredentials, sources)
	default:
		return p.imds(ctx)
	}
}

// webIdentity exchanges the token file's token for role credentials with
// STS AssumeRoleWithWebIdentity.
func (p *Provider) webIdentity(ctx context.Context) (Credentials, error) {
	env := p.getenv
	role := env("AWS_ROLE_ARN")
	if role == "" {
		return Credentials{}, errors.New("awscreds: web identity: AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not")
	}
	tok, err := os.ReadFile(env("AWS_WEB_IDENTITY_TOKEN_FILE"))
	if err != nil {
		return Credentials{}, fmt.Errorf("awscreds: web identity: %w", err)
	}
	endpoint := env("AWS_ENDPOINT_URL_STS")
	if endpoint == "" {
		region := env("AWS_REGION")
		if region == "" {
			region = env("AWS_DEFAULT_REGION")
		}
		if region == "" {
			return Credentials{}, errors.New("awscreds: web identity: set AWS_REGION for the STS endpoint (or AWS_ENDPOINT_URL_STS)")
		}
		endpoint = "https://sts." + region + ".amazonaws.com"
	}
	session := env("AWS_ROLE_SESSION_NAME")
	if session == "" {
		session = fmt.Sprintf("authpipe-%d", p.now().UnixNano())
	}
	form := url.Values{
		"Action":           {"AssumeRoleWithWebIdentity"},
		"Version":          {"2011-06-15"},
		"RoleArn":          {role},
		"RoleSessionName":  {session},
		"WebIdentityToken": {strings.TrimSpace(string(tok))},
	}
	body, err := p.do(ctx, http.MethodPost, strings.TrimSuffix(endpoint, "/")+"/", strings.NewReader(form.Encode()),
		http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	if err != nil {
		return Credentials{}, fmt.Errorf("awscreds: web identity: sts: %w", err)
	}
	c, err := ParseSTS(body)
	if err != nil {
		return Credentials{}, fmt.Errorf("awscreds: web identity: %w", err)
	}
	c.Source = "web-identity"
	return c, nil
}

// container asks the ECS or EKS Pod Identity credentials endpoint.
func (p *Provider) container(ctx context.Context) (Credentials, error) {
	env := p.getenv
	var u string
	if rel := env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"); rel != "" {
		u = containerDefault + "/" + strings.TrimPrefix(rel, "/")
	} else {
		u = env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
		if err := allowedContainerURL(u); err != nil {
			return Credentials{}, fmt.Errorf("awscreds: container: %w", err)
		}
	}
	h := http.Header{}
	auth := env("AWS_CONTAINER_AUTHORIZATION_TOKEN")
	if f := env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return Credentials{}, fmt.Errorf("awscreds: container: %w", err)
		}
		auth = strings.TrimSpace(string(b))
	}
	if strings.ContainsAny(auth, "\r\n") {
		return Credentials{}, errors.New("awscreds: container: the authorization token has a line break")
	}
	if auth != "" {
		h.Set("Authorization", auth)
	}
	body, err := p.do(ctx, http.MethodGet, u, nil, h)
	if err != nil {
		return Credentials{}, fmt.Errorf("awscreds: container: %w", err)
	}
	c, err := ParseJSON(body)
	if err != nil {
		return Credentials{}, fmt.Errorf("awscreds: container: %w", err)
	}
	c.Source = "container"
	return c, nil
}

// allowedContainerURL: a full URI must be https, or http to a loopback
// address or the ECS (169.254.170.2) or EKS Pod Identity (169.254.170.23,
// fd00:ec2::23) address, so that the token is not sent in clear text to
// anyone else.
func allowedContainerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("AWS_CONTAINER_CREDENTIALS_FULL_URI: %w", err)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
	default:
		return fmt.Errorf("AWS_CONTAINER_CREDENTIALS_FULL_URI %q: want http or https", raw)
	}
	host := u.Hostname()
	if host == "localhost" || host == "169.254.170.2" || host == "169.254.170.23" || host == "fd00:ec2::23" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("AWS_CONTAINER_CREDENTIALS_FULL_URI %q: plain http only to a loopback address or the ECS/EKS credential address", raw)
}

// imds fetches the instance profile's credentials with IMDSv2.
func (p *Provider) imds(ctx context.Context) (Credentials, error) {
	base := p.getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT")
	if base == "" {
		base = imdsDefault
	}
	base = strings.TrimSuffix(base, "/")
	tok, err := p.do(ctx, http.MethodPut, base+"/latest/api/token", nil, http.Header{"X-Aws-Ec2-Metadata-Token-Ttl-Seconds": {imdsTokenTTL}})
	if err != nil {
		return Credentials{}, fmt.Errorf("awscreds: %w: %s, and the EC2 instance metadata service does not answer: %w", ErrNoCredentials, sources, err)
	}
	h := http.Header{"X-Aws-Ec2-Metadata-Token": {strings.TrimSpace(string(tok))}}
	const creds = "/latest/meta-data/iam/security-credentials/"
	roles, err := p.do(ctx, http.MethodGet, base+creds, nil, h)
	if err != nil {
		return Credentials{}, fmt.Errorf("awscreds: instance metadata: role: %w", err)
	}
	role, _, _ := strings.Cut(strings.TrimSpace(string(roles)), "\n")
	if role == "" || strings.ContainsAny(role, "/?#") {
		return Credentials{}, fmt.Errorf("awscreds: instance metadata: no usable instance profile role in %q", roles)
	}
	body, err := p.do(ctx, http.MethodGet, base+creds+url.PathEscape(role), nil, h)
	if err != nil {
		return Credentials{}, fmt.Errorf("awscreds: instance metadata: role %s: %w", role, err)
	}
	c, err := ParseJSON(body)
	if err != nil {
		return Credentials{}, fmt.Errorf("awscreds: instance metadata: role %s: %w", role, err)
	}
	c.Source = "imds"
	return c, nil
}

// do makes one request under requestTimeout and returns the body of a 200
// answer, at most maxBody octets.
func (p *Provider) do(ctx context.Context, method, u string, body io.Reader, h http.Header) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("%s %s: answer larger than %d octets", method, u, maxBody)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(b))
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		return nil, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, msg)
	}
	return b, nil
}

// ParseJSON parses the credentials document of the container endpoint and
// IMDS: AccessKeyId, SecretAccessKey, Token and Expiration (RFC 3339);
// IMDS adds Code, which must be "Success" when present.
func ParseJSON(b []byte) (Credentials, error) {
	var d struct {
		Code            string
		Message         string
		AccessKeyID     string `json:"AccessKeyId"`
		SecretAccessKey string
		Token           string
		Expiration      string
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return Credentials{}, fmt.Errorf("credentials document: %w", err)
	}
	if d.Code != "" && d.Code != "Success" {
		return Credentials{}, fmt.Errorf("credentials document: code %q: %s", d.Code, d.Message)
	}
	return complete(d.AccessKeyID, d.SecretAccessKey, d.Token, d.Expiration)
}

// ParseSTS parses an AssumeRoleWithWebIdentity answer (STS query API,
// XML), or its error document.
func ParseSTS(b []byte) (Credentials, error) {
	var d struct {
		Result struct {
			Credentials struct {
				AccessKeyID     string `xml:"AccessKeyId"`
				SecretAccessKey string
				SessionToken    string
				Expiration      string
			}
		} `xml:"AssumeRoleWithWebIdentityResult"`
	}
	if err := xml.Unmarshal(b, &d); err != nil {
		return Credentials{}, fmt.Errorf("sts answer: %w", err)
	}
	c := d.Result.Credentials
	return complete(c.AccessKeyID, c.SecretAccessKey, c.SessionToken, c.Expiration)
}

func complete(id, secret, token, expiration string) (Credentials, error) {
	if id == "" || secret == "" {
		return Credentials{}, errors.New("credentials document without an access key id or secret access key")
	}
	c := Credentials{AccessKeyID: id, SecretAccessKey: secret, SessionToken: token}
	if expiration != "" {
		t, err := time.Parse(time.RFC3339, expiration)
		if err != nil {
			return Credentials{}, fmt.Errorf("credentials expiration: %w", err)
		}
		c.Expires = t
	}
	return c, nil
}
