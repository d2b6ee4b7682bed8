// Package dmarc evaluates DMARC for one message from already-computed SPF,
// DKIM and ARC results.
//
// The default mode follows RFC 9989 (DMARCbis, which replaced RFC 7489 in
// May 2026):
//
//   - Policy records are parsed per RFC 9989 sections 4.7 and 4.8
//     ([ParseRecord]): v=DMARC1 first, unknown tags ignored, syntax errors in
//     other tags discarded in favour of defaults, and a missing or invalid
//     p (or an invalid sp/np) turned into p=none when rua holds a valid URI
//     (section 4.10.1), otherwise the record is unusable (permerror).
//   - Discovery is the DNS Tree Walk of section 4.10, bounded to at most 8
//     queries per walk ([DefaultMaxQueries], configurable), with psd=y/n
//     stopping the walk; the policy record is the Author Domain's, else the
//     Organizational Domain's, else the Public Suffix Domain's (4.10.1).
//   - The Organizational Domain of the Author Domain and of every
//     Authenticated Identifier is selected from the same walk (4.10.2), so
//     relaxed alignment compares tree-walk Organizational Domains.
//   - sp applies to existing subdomains, np to non-existent ones (3.2.13,
//     A.4: NXDOMAIN for A, AAAA and MX of the Author Domain), t=y lowers
//     the applied policy one level (reason policy_test_mode, RFC 9990).
//
// [ModeRFC7489] keeps the RFC 7489 behaviour: the Organizational Domain
// comes from a public suffix list (RFC 7489 section 3.2, [PublicSuffixList];
// golang.org/x/net/publicsuffix by default), discovery looks at the From
// domain and then its Organizational Domain only (RFC 7489 6.6.3), records
// are parsed strictly and pct sampling applies (RFC 7489 6.6.4, reason
// sampled_out).
//
// Local policy overrides (trusted ARC forwarders, allow and deny lists,
// "require both SPF and DKIM alignment") change the disposition and add
// RFC 9990 policy override reasons; see [Overrides].
//
// All DNS goes through resolvercache.Resolver. The package keeps no global
// mutable state; an [Evaluator] is safe for concurrent use once configured.
package dmarc
