package awscreds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The shared config and credentials files, as the AWS SDKs and Tools
// Reference Guide ("Shared config and credentials files", "Location of
// the shared files", "Assume role credential provider", "Process
// credential provider") describes them.

const (
	// maxFile bounds each shared file.
	maxFile = 1 << 20
	// maxProfileChain bounds a source_profile chain: at most this many
	// profiles, the first included.
	maxProfileChain = 5
)

// sharedFiles are the profiles of the credentials and config files, keys
// lowercased.
type sharedFiles struct {
	credPath, confPath string                       // "" when not read
	cred, conf         map[string]map[string]string // profile → key → value
	skipped            []string                     // default-path files that could not be read, and why
}

// loadFiles reads AWS_SHARED_CREDENTIALS_FILE (default
// $HOME/.aws/credentials) and AWS_CONFIG_FILE (default $HOME/.aws/config).
// A file that does not exist has no profiles, and so has a file at a
// default path that cannot be read (HOME may well not be the user's, as
// the Go SDK treats such files); a file a variable names that cannot be
// read, a file larger than maxFile, or one that does not parse is an
// error.
func (p *Provider) loadFiles() (*sharedFiles, error) {
	f := &sharedFiles{cred: map[string]map[string]string{}, conf: map[string]map[string]string{}}
	home := p.getenv("HOME")
	load := func(variable, def string, add func(section string, kv map[string]string)) (string, error) {
		path, explicit := expandHome(p.getenv(variable), home), true
		if path == "" {
			if home == "" {
				return "", nil
			}
			path, explicit = filepath.Join(home, ".aws", def), false
		}
		sections, err := readINI(path)
		var unreadable unreadableError
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return "", nil
		case errors.As(err, &unreadable) && !explicit:
			f.skipped = append(f.skipped, err.Error())
			return "", nil
		case err != nil && explicit:
			return "", fmt.Errorf("awscreds: %s: %w", variable, err)
		case err != nil:
			return "", fmt.Errorf("awscreds: %w", err)
		}
		for _, s := range sections {
			add(s.name, s.kv)
		}
		return path, nil
	}
	var err error
	if f.credPath, err = load("AWS_SHARED_CREDENTIALS_FILE", "credentials", func(section string, kv map[string]string) {
		merge(f.cred, section, kv)
	}); err != nil {
		return nil, err
	}
	if f.confPath, err = load("AWS_CONFIG_FILE", "config", func(section string, kv map[string]string) {
		// [default] or [profile default]; [profile name]. Other
		// sections ([sso-session …], [services …], a name without
		// "profile") are not profiles.
		if section == "default" {
			merge(f.conf, "default", kv)
		} else if w := strings.Fields(section); len(w) == 2 && w[0] == "profile" {
			merge(f.conf, w[1], kv)
		}
	}); err != nil {
		return nil, err
	}
	return f, nil
}

func merge(into map[string]map[string]string, name string, kv map[string]string) {
	m := into[name]
	if m == nil {
		m = map[string]string{}
		into[name] = m
	}
	for k, v := range kv {
		m[k] = v
	}
}

// expandHome replaces a leading ~ (alone or before a slash) with home, as
// the SDKs do for the shared files' paths.
func expandHome(path, home string) string {
	if home != "" && (path == "~" || strings.HasPrefix(path, "~/")) {
		return home + path[1:]
	}
	return path
}

// unreadableError: the file is there but could not be opened or read.
type unreadableError struct{ err error }

func (e unreadableError) Error() string { return e.err.Error() }
func (e unreadableError) Unwrap() error { return e.err }

// readINI reads and parses the file at path: an error wrapping
// fs.ErrNotExist when there is none, an unreadableError when it cannot be
// opened or read.
func readINI(path string) ([]iniSection, error) {
	fh, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err != nil {
		return nil, unreadableError{err}
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxFile+1))
	if err != nil {
		return nil, unreadableError{fmt.Errorf("%s: %w", path, err)}
	}
	if len(b) > maxFile {
		return nil, fmt.Errorf("%s: larger than %d octets", path, maxFile)
	}
	sections, err := parseINI(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sections, nil
}

type iniSection struct {
	name string
	kv   map[string]string
}

// parseINI parses the INI subset of the shared files (SDKs and Tools
// Reference Guide, "Format of the config file"): [section] lines (the name
// trimmed; a comment may follow the bracket), key = value lines (key and
// value trimmed, the key lowercased; the first = or : splits them, as
// Python's configparser, which the AWS CLI uses, does; the value is kept
// whole, # or ; inside it included), and lines starting with # or ;,
// comments. A line indented under a key continues it (the nested
// settings of s3 = and the like) and is ignored. A section named twice
// is one section (later keys win). Anything else is an error naming the
// line.
func parseINI(b []byte) ([]iniSection, error) {
	var out []iniSection
	var cur map[string]string
	inKey := false
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		t := strings.TrimSpace(line)
		if t == "" || t[0] == '#' || t[0] == ';' {
			continue
		}
		if inKey && (line[0] == ' ' || line[0] == '\t') {
			continue // a continuation line: a nested setting
		}
		if t[0] == '[' {
			end := strings.IndexByte(t, ']')
			if end < 0 {
				return nil, fmt.Errorf("line %d: section header without ]", i+1)
			}
			if rest := strings.TrimSpace(t[end+1:]); rest != "" && rest[0] != '#' && rest[0] != ';' {
				return nil, fmt.Errorf("line %d: text after the section header", i+1)
			}
			name := strings.TrimSpace(t[1:end])
			if name == "" {
				return nil, fmt.Errorf("line %d: empty section name", i+1)
			}
			j := slices.IndexFunc(out, func(s iniSection) bool { return s.name == name })
			if j < 0 {
				out = append(out, iniSection{name: name, kv: map[string]string{}})
				j = len(out) - 1
			}
			cur, inKey = out[j].kv, false
			continue
		}
		sep := strings.IndexAny(t, "=:")
		if sep < 0 {
			return nil, fmt.Errorf("line %d: want key = value", i+1)
		}
		k := strings.ToLower(strings.TrimSpace(t[:sep]))
		if k == "" {
			return nil, fmt.Errorf("line %d: no key before %c", i+1, t[sep])
		}
		if cur == nil {
			return nil, fmt.Errorf("line %d: %s outside a section", i+1, k)
		}
		cur[k] = strings.TrimSpace(t[sep+1:])
		inKey = true
	}
	return out, nil
}

// profile is the named profile, the credentials file's keys over the
// config file's, and whether either file has it.
func (f *sharedFiles) profile(name string) (map[string]string, bool) {
	c, inCred := f.cred[name]
	k, inConf := f.conf[name]
	if !inCred && !inConf {
		return nil, false
	}
	m := map[string]string{}
	for key, v := range k {
		m[key] = v
	}
	for key, v := range c {
		m[key] = v
	}
	return m, true
}

// paths names the files read, for an error message.
func (f *sharedFiles) paths() string {
	var p []string
	for _, s := range []string{f.credPath, f.confPath} {
		if s != "" {
			p = append(p, s)
		}
	}
	msg := strings.Join(p, " or ")
	if len(p) == 0 {
		msg = "the shared credentials or config file (none found: set HOME, AWS_SHARED_CREDENTIALS_FILE or AWS_CONFIG_FILE)"
	}
	if len(f.skipped) > 0 {
		msg += " (not read: " + strings.Join(f.skipped, "; ") + ")"
	}
	return msg
}

// where names the files that have profile name.
func (f *sharedFiles) where(name string) string {
	var p []string
	if _, ok := f.cred[name]; ok {
		p = append(p, f.credPath)
	}
	if _, ok := f.conf[name]; ok {
		p = append(p, f.confPath)
	}
	return strings.Join(p, " and ")
}

// hasCredentialSettings: a profile with any of these (not empty) says
// where its credentials come from, so the files source is set up by it.
func hasCredentialSettings(prof map[string]string) bool {
	for _, k := range []string{"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "credential_process",
		"role_arn", "source_profile", "credential_source", "web_identity_token_file"} {
		if prof[k] != "" {
			return true
		}
	}
	return hasSSO(prof)
}

// wantsEnvKeys: profile name (or a profile down its source_profile chain)
// assumes a role with the environment's keys (credential_source =
// Environment), so those keys are its source, not credentials to use as
// they are.
func (f *sharedFiles) wantsEnvKeys(name string) bool {
	for range maxProfileChain {
		prof, ok := f.profile(name)
		if !ok || prof["role_arn"] == "" {
			return false
		}
		if strings.EqualFold(prof["credential_source"], "Environment") {
			return true
		}
		if prof["source_profile"] == "" || prof["source_profile"] == name {
			return false
		}
		name = prof["source_profile"]
	}
	return false
}

// profileCreds resolves profile name's credentials; chain holds the
// profiles whose source_profile led here.
func (p *Provider) profileCreds(ctx context.Context, f *sharedFiles, name string, chain []string) (Credentials, error) {
	if slices.Contains(chain, name) {
		return Credentials{}, fmt.Errorf("awscreds: profile %s: source_profile cycle %s", chain[0], strings.Join(append(slices.Clip(chain), name), " → "))
	}
	if len(chain) >= maxProfileChain {
		return Credentials{}, fmt.Errorf("awscreds: profile %s: source_profile chain %s… longer than %d profiles",
			chain[0], strings.Join(append(slices.Clip(chain), name), " → "), maxProfileChain)
	}
	chain = append(slices.Clip(chain), name)
	// at names the profile, and the chain that led to it.
	at := "profile " + name
	if len(chain) > 1 {
		at = "profile " + strings.Join(chain, " → source_profile ")
	}
	prof, ok := f.profile(name)
	if !ok {
		return Credentials{}, fmt.Errorf("awscreds: %s: not in %s", at, f.paths())
	}
	at += " (" + f.where(name) + ")"
	fail := func(err error) (Credentials, error) { return Credentials{}, fmt.Errorf("awscreds: %s: %w", at, err) }

	role := prof["role_arn"]
	hasSource := prof["source_profile"] != "" || prof["credential_source"] != "" || prof["web_identity_token_file"] != ""
	switch {
	case role != "" && hasSource:
		return p.roleCreds(ctx, f, name, prof, chain, fail)
	case hasSSO(prof):
		return fail(fmt.Errorf("IAM Identity Center (SSO) profiles are not supported; "+
			"use credential_process = aws configure export-credentials --profile %s --format process in another profile", name))
	case role != "":
		return fail(fmt.Errorf("%w: role_arn needs source_profile, credential_source or web_identity_token_file", ErrNoCredentials))
	case hasSource:
		return fail(errors.New("source_profile, credential_source and web_identity_token_file need role_arn"))
	case prof["aws_access_key_id"] != "" || prof["aws_secret_access_key"] != "" || prof["aws_session_token"] != "":
		c, err := staticKeys(prof)
		if err != nil {
			return fail(err)
		}
		return c, nil
	case prof["credential_process"] != "":
		c, err := p.process(ctx, prof["credential_process"])
		if err != nil {
			return fail(err)
		}
		return c, nil
	}
	return fail(fmt.Errorf("%w: no credential settings (aws_access_key_id and aws_secret_access_key, credential_process, "+
		"or role_arn with source_profile, credential_source or web_identity_token_file)", ErrNoCredentials))
}

// hasSSO: the profile has IAM Identity Center settings (sso_session,
// sso_start_url, sso_account_id, sso_role_name, …).
func hasSSO(prof map[string]string) bool {
	for k, v := range prof {
		if strings.HasPrefix(k, "sso_") && v != "" {
			return true
		}
	}
	return false
}

// staticKeys are a profile's aws_access_key_id, aws_secret_access_key and
// aws_session_token.
func staticKeys(prof map[string]string) (Credentials, error) {
	c := Credentials{AccessKeyID: prof["aws_access_key_id"], SecretAccessKey: prof["aws_secret_access_key"],
		SessionToken: prof["aws_session_token"], Source: "shared-config"}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return Credentials{}, fmt.Errorf("%w: aws_access_key_id and aws_secret_access_key must both be set", ErrNoCredentials)
	}
	return c, nil
}

// roleCreds assumes a profile's role_arn: with its web identity token
// file (AssumeRoleWithWebIdentity), else with the credentials of its
// source_profile or credential_source (AssumeRole).
func (p *Provider) roleCreds(ctx context.Context, f *sharedFiles, name string, prof map[string]string, chain []string,
	fail func(error) (Credentials, error)) (Credentials, error) {
	role, region := prof["role_arn"], p.region(prof)
	if prof["mfa_serial"] != "" {
		return fail(errors.New("mfa_serial: a role that needs an MFA code cannot be assumed here (the code is typed in, and there is no one to type it)"))
	}
	var src Credentials
	switch source := prof["source_profile"]; {
	case source != "" && prof["credential_source"] != "":
		return fail(errors.New("source_profile and credential_source exclude each other"))
	case source == name:
		// The profile's own keys, as the SDKs take them.
		c, err := staticKeys(prof)
		if err != nil {
			return fail(fmt.Errorf("source_profile is the profile itself: %w", err))
		}
		src = c
	case source != "":
		c, err := p.profileCreds(ctx, f, source, chain)
		if err != nil {
			return Credentials{}, err
		}
		src = c
	case prof["credential_source"] != "":
		c, err := p.credentialSource(ctx, prof["credential_source"])
		if err != nil {
			return fail(err)
		}
		src = c
	default: // web_identity_token_file
		c, err := p.webIdentity(ctx, role, prof["web_identity_token_file"], prof["role_session_name"], region)
		if err != nil {
			return fail(err)
		}
		return c, nil
	}
	c, err := p.assumeRole(ctx, src, role, prof["role_session_name"], prof["external_id"], prof["duration_seconds"], region)
	if err != nil {
		return fail(err)
	}
	return c, nil
}

// credentialSource fetches a credential_source's credentials: Environment,
// Ec2InstanceMetadata or EcsContainer.
func (p *Provider) credentialSource(ctx context.Context, source string) (Credentials, error) {
	switch {
	case strings.EqualFold(source, "Environment"):
		c, err := p.envKeys()
		if err != nil {
			return Credentials{}, fmt.Errorf("credential_source %s: %w", source, err)
		}
		return c, nil
	case strings.EqualFold(source, "Ec2InstanceMetadata"):
		if strings.EqualFold(p.getenv("AWS_EC2_METADATA_DISABLED"), "true") {
			return Credentials{}, fmt.Errorf("credential_source %s: the EC2 instance metadata service is off (AWS_EC2_METADATA_DISABLED)", source)
		}
		c, err := p.imds(ctx)
		if err != nil {
			return Credentials{}, fmt.Errorf("credential_source %s: %w", source, err)
		}
		return c, nil
	case strings.EqualFold(source, "EcsContainer"):
		if p.getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") == "" && p.getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI") == "" {
			return Credentials{}, fmt.Errorf("credential_source %s: set AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or AWS_CONTAINER_CREDENTIALS_FULL_URI", source)
		}
		c, err := p.container(ctx)
		if err != nil {
			return Credentials{}, fmt.Errorf("credential_source %s: %w", source, err)
		}
		return c, nil
	}
	return Credentials{}, fmt.Errorf("credential_source %q: want Environment, Ec2InstanceMetadata or EcsContainer", source)
}
