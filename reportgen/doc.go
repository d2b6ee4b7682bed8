// Package reportgen aggregates verdicts into DMARC aggregate reports (RFC
// 9990, and RFC 7489 Appendix C in that mode) and TLS results into SMTP TLS
// reports (RFC 8460), keeps the aggregates in a durable bbolt store with UTC
// day windows, builds the report files and delivers them from a durable
// outbox.
//
// Data flow (see docs/reports.md):
//
//   - [Aggregator.Add] turns each *verdict.Verdict into a row of the report
//     window (policy domain, UTC day) and [Aggregator.Flush] yields
//     [PartialAggregate] values, one per window, with a compact binary
//     encoding ([PartialAggregate.MarshalBinary]) meant as the value of a
//     Kafka record keyed by policy domain (topic authpipe.aggregates).
//   - [Store.Merge] applies a batch of partial aggregates and the consumed
//     offsets in one bbolt transaction, so a crash neither loses nor
//     double-counts.
//   - [Store.CloseDue] closes the windows whose UTC day ended more than the
//     grace period ago, judged by an injected clock.
//   - [BuildDMARC] streams the XML of one window from a store cursor,
//     gzip-compressed, split into several reports under a size cap.
//
// Time is always injected; nothing here calls time.Now except through a
// configured clock.
package reportgen
