// Package awscreds finds AWS credentials where the AWS SDKs' default chain
// looks for them, for the aws-msk-iam SASL mechanism (Amazon MSK IAM
// access control), without the SDK: static keys from the environment, a
// profile of the shared credentials and config files (static keys, a
// credential_process, or a role assumed with STS), a web identity token
// exchanged with STS (IAM roles for service accounts on EKS), the
// container credentials endpoint (ECS task roles, EKS Pod Identity), and
// the EC2 instance metadata service (IMDSv2, instance profiles).
// Temporary credentials are kept until shortly before they expire and
// fetched again then.
//
// The sources, in this order, and the environment variables and settings
// that select them follow the AWS SDKs and Tools Reference Guide
// ("Standardized credential providers", "Shared config and credentials
// files", "Assume role credential provider", "Process credential
// provider") and the service documentation:
//   - environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional
//     AWS_SESSION_TOKEN;
//   - shared files: the profile AWS_PROFILE, else default, of
//     AWS_SHARED_CREDENTIALS_FILE (default ~/.aws/credentials, sections
//     [name]) and AWS_CONFIG_FILE (default ~/.aws/config, sections
//     [profile name] and [default]), the credentials file's keys winning
//     for the same profile. A profile gives aws_access_key_id and
//     aws_secret_access_key (optional aws_session_token); or a
//     credential_process command, run without a shell under a 1 minute
//     limit, whose JSON output (Version 1) is the credentials; or a
//     role_arn assumed with STS AssumeRole (SigV4-signed; role_session_name,
//     external_id, duration_seconds) with the credentials of its
//     source_profile (resolved in turn, at most 5 profiles deep, no
//     cycles; the profile itself means its own keys) or of its
//     credential_source (Environment, Ec2InstanceMetadata, EcsContainer);
//     or a role_arn with a web_identity_token_file (as below). STS is at
//     https://sts.REGION.amazonaws.com, REGION from AWS_REGION,
//     AWS_DEFAULT_REGION or the profile's region, or AWS_ENDPOINT_URL_STS;
//   - web identity: AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, optional
//     AWS_ROLE_SESSION_NAME; STS AssumeRoleWithWebIdentity (an unsigned
//     call), at the STS endpoint above;
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
// The first source set up is the one used; a source that is set up and
// fails is an error, not a reason to try the next (as the SDKs do), so a
// broken role is reported rather than hidden behind an instance profile.
// The environment's keys are set up when either variable is set, except
// that a profile whose role has credential_source = Environment takes
// them as its source instead. The shared files are set up when
// AWS_PROFILE is set, or when the default profile exists in either file
// with a credential setting (keys, credential_process, role_arn,
// source_profile, credential_source, web_identity_token_file, sso_*); a
// default profile with only other settings (region, say), or none, leaves
// the chain to the next source. A profile named by AWS_PROFILE that is in
// neither file is an error (exit status 1 upstream: a typo or the wrong
// HOME should not fall back to an instance role), and one there without
// credential settings wraps ErrNoCredentials (nothing to fetch; the SDKs
// would go on to the container and instance sources, here unset
// AWS_PROFILE for them). A shared file larger than 1 MiB or that does not
// parse is an error whichever source is used, and so is one named by
// AWS_SHARED_CREDENTIALS_FILE or AWS_CONFIG_FILE that cannot be read; one
// at the default path that cannot be read counts as absent, as in the Go
// SDK (HOME need not be the user's).
//
// Not supported: IAM Identity Center (sso_* settings, [sso-session]
// sections: an error that suggests credential_process = aws configure
// export-credentials --profile NAME --format process), roles that need
// an MFA code (mfa_serial: an error), endpoint_url and [services]
// sections (AWS_ENDPOINT_URL_STS is honoured), and AWS_DEFAULT_PROFILE.
package awscreds

import (
	"bytes"
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
	"strconv"
	"strings"
	"sync"
	"time"
)

// Credentials are one set of AWS credentials. Expires is zero for keys
// that do not expire (static keys, from the environment or a profile, and
// a credential_process output without Expiration).
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expires         time.Time
	// Source says where they came from: "environment",
	// "shared-config" (a profile's static keys), "credential-process",
	// "assume-role" (a profile's role_arn, with source_profile or
	// credential_source), "web-identity" (AWS_WEB_IDENTITY_TOKEN_FILE,
	// or a profile's web_identity_token_file), "container" or "imds".
	Source string
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

// WithEnv sets where the provider reads its environment variables,
// HOME (for the shared files) included (default os.Getenv). A
// credential_process command still gets the process's environment.
func WithEnv(getenv func(string) string) Option { return func(p *Provider) { p.getenv = getenv } }

// WithClock sets the clock that decides when credentials are due for a
// refresh, dates SigV4 signatures and names role sessions (default
// time.Now).
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
const sources = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials or ~/.aws/config " +
	"(AWS_PROFILE, else default), AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, " +
	"or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or AWS_CONTAINER_CREDENTIALS_FULL_URI"

// fetch asks the first source set up: environment keys, the shared
// files' profile, web identity, container endpoint, instance metadata.
func (p *Provider) fetch(ctx context.Context) (Credentials, error) {
	env := p.getenv
	files, err := p.loadFiles()
	if err != nil {
		return Credentials{}, err
	}
	name, explicit := env("AWS_PROFILE"), true
	if name == "" {
		name, explicit = "default", false
	}
	prof, found := files.profile(name)
	envKeys := env("AWS_ACCESS_KEY_ID") != "" || env("AWS_SECRET_ACCESS_KEY") != ""
	switch {
	case envKeys && !files.wantsEnvKeys(name):
		c, err := p.envKeys()
		if err != nil {
			return Credentials{}, fmt.Errorf("awscreds: %w", err)
		}
		return c, nil
	case explicit && !found:
		return Credentials{}, fmt.Errorf("awscreds: profile %s (AWS_PROFILE): not in %s", name, files.paths())
	case explicit && !hasCredentialSettings(prof):
		return Credentials{}, fmt.Errorf("awscreds: profile %s (AWS_PROFILE, in %s): %w: it has no credential settings "+
			"(aws_access_key_id and aws_secret_access_key, credential_process, or role_arn with source_profile, "+
			"credential_source or web_identity_token_file)", name, files.where(name), ErrNoCredentials)
	case found && hasCredentialSettings(prof):
		return p.profileCreds(ctx, files, name, nil)
	case env("AWS_WEB_IDENTITY_TOKEN_FILE") != "":
		role := env("AWS_ROLE_ARN")
		if role == "" {
			return Credentials{}, errors.New("awscreds: web identity: AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not")
		}
		c, err := p.webIdentity(ctx, role, env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_SESSION_NAME"), p.region(prof))
		if err != nil {
			return Credentials{}, fmt.Errorf("awscreds: %w", err)
		}
		return c, nil
	case env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") != "" || env("AWS_CONTAINER_CREDENTIALS_FULL_URI") != "":
		c, err := p.container(ctx)
		if err != nil {
			return Credentials{}, fmt.Errorf("awscreds: %w", err)
		}
		return c, nil
	case strings.EqualFold(env("AWS_EC2_METADATA_DISABLED"), "true"):
		return Credentials{}, fmt.Errorf("awscreds: %w: %s, and the EC2 instance metadata service is off (AWS_EC2_METADATA_DISABLED)", ErrNoCredentials, sources)
	default:
		c, err := p.imds(ctx)
		if u := (imdsUnreachable{}); errors.As(err, &u) {
			return Credentials{}, fmt.Errorf("awscreds: %w: %s, and the EC2 instance metadata service does not answer: %w", ErrNoCredentials, sources, u.err)
		}
		if err != nil {
			return Credentials{}, fmt.Errorf("awscreds: %w", err)
		}
		return c, nil
	}
}

// envKeys are the static keys of the environment.
func (p *Provider) envKeys() (Credentials, error) {
	env := p.getenv
	c := Credentials{AccessKeyID: env("AWS_ACCESS_KEY_ID"), SecretAccessKey: env("AWS_SECRET_ACCESS_KEY"),
		SessionToken: env("AWS_SESSION_TOKEN"), Source: "environment"}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return Credentials{}, fmt.Errorf("%w: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set", ErrNoCredentials)
	}
	return c, nil
}

// region is the region for STS: AWS_REGION, AWS_DEFAULT_REGION, else the
// profile's region setting (environment variables first, as the SDKs and
// Tools Reference Guide's "Region" setting has it).
func (p *Provider) region(prof map[string]string) string {
	for _, r := range []string{p.getenv("AWS_REGION"), p.getenv("AWS_DEFAULT_REGION"), prof["region"]} {
		if r != "" {
			return r
		}
	}
	return ""
}

// stsEndpoint is AWS_ENDPOINT_URL_STS, else the regional endpoint
// https://sts.REGION.amazonaws.com. The region signs the request
// (us-east-1, that of the global endpoint, when AWS_ENDPOINT_URL_STS is
// set without a region).
func (p *Provider) stsEndpoint(region string) (endpoint, signingRegion string, err error) {
	if e := p.getenv("AWS_ENDPOINT_URL_STS"); e != "" {
		if region == "" {
			region = "us-east-1"
		}
		return strings.TrimSuffix(e, "/") + "/", region, nil
	}
	if region == "" {
		return "", "", errors.New("set AWS_REGION (or the profile's region) for the STS endpoint, or AWS_ENDPOINT_URL_STS")
	}
	return "https://sts." + region + ".amazonaws.com/", region, nil
}

// sessionName is name, else authpipe-<Unix nanoseconds>.
func (p *Provider) sessionName(name string) string {
	if name != "" {
		return name
	}
	return fmt.Sprintf("authpipe-%d", p.now().UnixNano())
}

// webIdentity exchanges the token file's token for the role's credentials
// with STS AssumeRoleWithWebIdentity (an unsigned call). The token file
// is read at every call, so a rotated token is used.
func (p *Provider) webIdentity(ctx context.Context, role, tokenFile, session, region string) (Credentials, error) {
	tok, err := os.ReadFile(expandHome(tokenFile, p.getenv("HOME")))
	if err != nil {
		return Credentials{}, fmt.Errorf("web identity: %w", err)
	}
	endpoint, _, err := p.stsEndpoint(region)
	if err != nil {
		return Credentials{}, fmt.Errorf("web identity: %w", err)
	}
	form := url.Values{
		"Action":           {"AssumeRoleWithWebIdentity"},
		"Version":          {"2011-06-15"},
		"RoleArn":          {role},
		"RoleSessionName":  {p.sessionName(session)},
		"WebIdentityToken": {strings.TrimSpace(string(tok))},
	}
	c, err := p.sts(ctx, endpoint, form, nil, "")
	if err != nil {
		return Credentials{}, fmt.Errorf("web identity: %w", err)
	}
	c.Source = "web-identity"
	return c, nil
}

// assumeRole calls STS AssumeRole for role with the source credentials
// src, signed with SigV4 (service sts). externalID and duration
// (duration_seconds) are sent when set.
func (p *Provider) assumeRole(ctx context.Context, src Credentials, role, session, externalID, duration, region string) (Credentials, error) {
	endpoint, signingRegion, err := p.stsEndpoint(region)
	if err != nil {
		return Credentials{}, fmt.Errorf("assume role %s: %w", role, err)
	}
	form := url.Values{
		"Action":          {"AssumeRole"},
		"Version":         {"2011-06-15"},
		"RoleArn":         {role},
		"RoleSessionName": {p.sessionName(session)},
	}
	if externalID != "" {
		form.Set("ExternalId", externalID)
	}
	if duration != "" {
		if n, err := strconv.Atoi(duration); err != nil || n <= 0 {
			return Credentials{}, fmt.Errorf("assume role %s: duration_seconds %q: want a number of seconds", role, duration)
		}
		form.Set("DurationSeconds", duration)
	}
	c, err := p.sts(ctx, endpoint, form, &src, signingRegion)
	if err != nil {
		return Credentials{}, fmt.Errorf("assume role %s: %w", role, err)
	}
	c.Source = "assume-role"
	return c, nil
}

// sts posts one STS query API request (form) and parses the credentials
// of its answer; with signer it is signed by those credentials for
// region.
func (p *Provider) sts(ctx context.Context, endpoint string, form url.Values, signer *Credentials, region string) (Credentials, error) {
	body := []byte(form.Encode())
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded; charset=utf-8"}}
	var sign func(*http.Request)
	if signer != nil {
		sign = func(r *http.Request) { signV4(r, body, *signer, region, "sts", p.now()) }
	}
	b, status, err := p.roundTrip(ctx, http.MethodPost, endpoint, body, h, sign)
	if err != nil {
		return Credentials{}, fmt.Errorf("sts: %w", err)
	}
	if status != "" {
		if msg, ok := stsError(b); ok {
			return Credentials{}, fmt.Errorf("sts: %s %s: %s: %s", http.MethodPost, endpoint, status, msg)
		}
		return Credentials{}, fmt.Errorf("sts: %s %s: %s: %s", http.MethodPost, endpoint, status, excerpt(b))
	}
	return ParseSTS(b)
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
			return Credentials{}, fmt.Errorf("container: %w", err)
		}
	}
	h := http.Header{}
	auth := env("AWS_CONTAINER_AUTHORIZATION_TOKEN")
	if f := env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return Credentials{}, fmt.Errorf("container: %w", err)
		}
		auth = strings.TrimSpace(string(b))
	}
	if strings.ContainsAny(auth, "\r\n") {
		return Credentials{}, errors.New("container: the authorization token has a line break")
	}
	if auth != "" {
		h.Set("Authorization", auth)
	}
	body, err := p.do(ctx, http.MethodGet, u, nil, h)
	if err != nil {
		return Credentials{}, fmt.Errorf("container: %w", err)
	}
	c, err := ParseJSON(body)
	if err != nil {
		return Credentials{}, fmt.Errorf("container: %w", err)
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
		return Credentials{}, imdsUnreachable{err}
	}
	h := http.Header{"X-Aws-Ec2-Metadata-Token": {strings.TrimSpace(string(tok))}}
	const creds = "/latest/meta-data/iam/security-credentials/"
	roles, err := p.do(ctx, http.MethodGet, base+creds, nil, h)
	if err != nil {
		return Credentials{}, fmt.Errorf("instance metadata: role: %w", err)
	}
	role, _, _ := strings.Cut(strings.TrimSpace(string(roles)), "\n")
	if role == "" || strings.ContainsAny(role, "/?#") {
		return Credentials{}, fmt.Errorf("instance metadata: no usable instance profile role in %q", roles)
	}
	body, err := p.do(ctx, http.MethodGet, base+creds+url.PathEscape(role), nil, h)
	if err != nil {
		return Credentials{}, fmt.Errorf("instance metadata: role %s: %w", role, err)
	}
	c, err := ParseJSON(body)
	if err != nil {
		return Credentials{}, fmt.Errorf("instance metadata: role %s: %w", role, err)
	}
	c.Source = "imds"
	return c, nil
}

// imdsUnreachable: IMDS gave no session token, which outside EC2 means
// there is no instance metadata service (no source is set up).
type imdsUnreachable struct{ err error }

func (e imdsUnreachable) Error() string {
	return "instance metadata: the EC2 instance metadata service does not answer: " + e.err.Error()
}
func (e imdsUnreachable) Unwrap() error { return e.err }

// do makes one request under requestTimeout and returns the body of a 200
// answer, at most maxBody octets.
func (p *Provider) do(ctx context.Context, method, u string, body []byte, h http.Header) ([]byte, error) {
	b, status, err := p.roundTrip(ctx, method, u, body, h, nil)
	if err != nil {
		return nil, err
	}
	if status != "" {
		return nil, fmt.Errorf("%s %s: %s: %s", method, u, status, excerpt(b))
	}
	return b, nil
}

// roundTrip makes one request under requestTimeout, signed by sign when
// that is not nil, and returns the answer's body (at most maxBody octets)
// and, when the answer is not a 200, its status line.
func (p *Provider) roundTrip(ctx context.Context, method, u string, body []byte, h http.Header, sign func(*http.Request)) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		return nil, "", err
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	if sign != nil {
		sign(req)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, "", fmt.Errorf("%s %s: %w", method, u, err)
	}
	if len(b) > maxBody {
		return nil, "", fmt.Errorf("%s %s: answer larger than %d octets", method, u, maxBody)
	}
	if resp.StatusCode != http.StatusOK {
		return b, resp.Status, nil
	}
	return b, "", nil
}

// excerpt is the start of an answer, for an error message: white space
// folded, at most 200 octets.
func excerpt(b []byte) string {
	msg := strings.Join(strings.Fields(string(b)), " ")
	if len(msg) > 200 {
		msg = strings.ToValidUTF8(msg[:200], "") + "…"
	}
	return msg
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

// ParseSTS parses an STS AssumeRole or AssumeRoleWithWebIdentity answer
// (STS query API, XML: AssumeRoleResponse/AssumeRoleResult/Credentials,
// AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult/
// Credentials), or its error document
// (ErrorResponse/Error/Code and Message), which is an error with the code
// and message.
func ParseSTS(b []byte) (Credentials, error) {
	type result struct {
		Credentials struct {
			AccessKeyID     string `xml:"AccessKeyId"`
			SecretAccessKey string
			SessionToken    string
			Expiration      string
		}
	}
	var d struct {
		XMLName     xml.Name
		AssumeRole  result `xml:"AssumeRoleResult"`
		WebIdentity result `xml:"AssumeRoleWithWebIdentityResult"`
	}
	if msg, ok := stsError(b); ok {
		return Credentials{}, fmt.Errorf("sts error: %s", msg)
	}
	if err := xml.Unmarshal(b, &d); err != nil {
		return Credentials{}, fmt.Errorf("sts answer: %w", err)
	}
	var r result
	switch d.XMLName.Local {
	case "AssumeRoleResponse":
		r = d.AssumeRole
	case "AssumeRoleWithWebIdentityResponse":
		r = d.WebIdentity
	default:
		return Credentials{}, fmt.Errorf("sts answer: unexpected <%s>", excerpt([]byte(d.XMLName.Local)))
	}
	c := r.Credentials
	return complete(c.AccessKeyID, c.SecretAccessKey, c.SessionToken, c.Expiration)
}

// stsError is the code and message of an STS error document
// (<ErrorResponse><Error><Code>…</Code><Message>…</Message></Error>), and
// whether b is one.
func stsError(b []byte) (string, bool) {
	var d struct {
		XMLName xml.Name
		Error   struct {
			Code    string
			Message string
		}
	}
	if xml.Unmarshal(b, &d) != nil || d.XMLName.Local != "ErrorResponse" {
		return "", false
	}
	code := excerpt([]byte(d.Error.Code))
	if code == "" {
		code = "no error code"
	}
	if msg := excerpt([]byte(d.Error.Message)); msg != "" {
		return code + ": " + msg, true
	}
	return code, true
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
