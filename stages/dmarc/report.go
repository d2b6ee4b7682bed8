package dmarc

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

// ExternalReportsAccepted verifies that destDomain accepts DMARC reports
// about policyDomain (RFC 9990 "Verifying External Destinations", RFC 7489
// 7.1): a TXT query at <policyDomain>._report._dmarc.<destDomain>, true when
// at least one record passes basic tag-list parsing with v=DMARC1 first.
// Several such records are accepted (RFC 9990 step 8).
//
// It returns (false, nil) when no record confirms, (false, err) with err
// wrapping ErrSyntax when records starting with v=DMARC1 failed basic
// parsing, and (false, err) with a resolvercache error when the lookup
// failed (resolvercache.IsTemporary tells whether to retry later; RFC 9990
// step 5 allows deferring delivery). A name over DNS limits gives
// (false, err) without a query (step 4). One DNS query.
func (e *Evaluator) ExternalReportsAccepted(ctx context.Context, policyDomain, destDomain string) (bool, error) {
	pd, err := canonicalDomain(policyDomain)
	if err != nil {
		return false, fmt.Errorf("dmarc: external report check: policy domain: %w", err)
	}
	dd, err := canonicalDomain(destDomain)
	if err != nil {
		return false, fmt.Errorf("dmarc: external report check: destination: %w", err)
	}
	name := pd + "._report._dmarc." + dd
	if err := resolvercache.ValidateName(name); err != nil {
		return false, fmt.Errorf("dmarc: external report check %s: %w", name, err)
	}
	if e.Resolver == nil {
		return false, errors.New("dmarc: no resolver configured")
	}
	ans, err := e.Resolver.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return false, fmt.Errorf("dmarc: external report check %s: %w", name, err)
	}
	var synErr error
	for _, txt := range ans.TXT {
		if !startsWithV1(txt) {
			continue
		}
		if err := basicTagList(txt); err != nil {
			synErr = fmt.Errorf("dmarc: external report record at %s: %w", name, err)
			continue
		}
		return true, nil
	}
	return false, synErr
}

// basicTagList checks the tag=value list syntax of a record (RFC 9990
// "parse the result as a series of tag=value pairs"; a trailing ";" is
// optional).
func basicTagList(txt string) error {
	parts := strings.Split(txt, ";")
	for i, p := range parts {
		p = trimWSP(p)
		if p == "" {
			if i == len(parts)-1 && i > 0 {
				continue
			}
			return fmt.Errorf("empty tag: %w", ErrSyntax)
		}
		if _, v, ok := splitTag(p); !ok || v == "" {
			return fmt.Errorf("%q is not a tag=value pair: %w", p, ErrSyntax)
		}
	}
	return nil
}
