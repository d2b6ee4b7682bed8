// Package arc validates Authenticated Received Chains (RFC 8617) and seals
// messages with new ARC sets.
//
// An ARC set is three header fields sharing one instance number i=
// (RFC 8617 4.2): ARC-Authentication-Results (AAR, 4.1.1) records what the
// sealer's authentication checks found, ARC-Message-Signature (AMS, 4.1.2)
// is a DKIM-style signature over the message as the sealer saw it, and
// ARC-Seal (AS, 4.1.3) signs the ARC header fields of its own and all
// older sets, binding the chain together (5.1.1).
//
// [Validator.Validate] implements the chain validation algorithm of
// RFC 8617 5.2 and reports "none", "pass" or "fail" together with, for
// each set, the sealer (AS d=), its selector, the recorded AAR payload and
// which signatures verified, so that DMARC local policy can honour the
// results recorded by a trusted sealer (RFC 8617 7.2.1, RFC 9989).
// [Sealer.Seal] adds a set (RFC 8617 5.1), and [CollectAuthResults]
// gathers a host's Authentication-Results for the new AAR.
//
// Canonicalisation, body hashing, b= stripping, key records and signature
// verification come from package stages/dkim: AMS and AS use the same
// algorithms (rsa-sha256, ed25519-sha256; rsa-sha1 only when allowed, per
// RFC 8301) and the same key records (RFC 6376 3.6). Tag-lists are parsed
// here, more strictly than dkim.ParseTagList (empty tag-specs are errors,
// as the ValiMail ARC suite requires).
//
// Bounds: at most MaxSets sets (default 50, RFC 8617 4.2.1); a message
// with more ARC header fields than 3*MaxSets is failed before any field is
// parsed. For a chain of N sets one Validate call verifies at most 2N
// signatures (N seals, plus one AMS, or up to N when oldest-pass is
// computed; an AMS without c= may be tried twice), fetches each distinct
// (domain, selector) key once, hashes the body once per distinct
// (canonicalisation, hash, l=) combination, and canonicalises each ARC
// header field once for all the seals.
package arc
