package stages

// MessageWorkBytes bounds the memory one Verify call holds while it runs,
// besides the message's own bytes and MessageCopies times their size, for
// the memory bound of a process that verifies (pipeline.MemoryBound charges
// it per message in flight). It covers the goroutine stacks (the caller's,
// and the helpers: ARC when there is a chain, and SPF and the prefetches
// when the resolver cannot ask without waiting; about 12 KiB each once
// grown), the parse state, the lookups in flight (a prefetch nobody waits
// for is a 2 KiB query) and the verdict.
//
// TestMessageWorkBytesBound measures a worst case the limits allow: five
// DKIM signatures under keys of their own and a four-set ARC chain through
// sealers of their own, nothing cached, every DNS answer held back. In
// session 8 that was about 110 KiB a message (stacks 56, live heap 52;
// 125 KiB under the race detector), against 85 KiB (41 and 44) before
// later keys were prefetched, which was already over the 64 KiB the
// pipeline used to charge; in session 19, with the prefetches asked without
// waiting (no SPF, DMARC or key helper), 89 KiB (stacks 32, heap 56). Longer chains hold more parse state, in
// proportion to their header bytes: that part is MessageCopies'.
const MessageWorkBytes = 160 << 10

// MessageCopies is how many times its own size a message's parse state
// may take while it is verified, beyond MessageWorkBytes: the CRLF copy
// of a message with bare LF line ends, the unfolded header values, and
// for ARC the relaxed canonical form of the sets (seal input) and each
// ARC-Authentication-Results payload, as a string. TestMessageWorkBytesBound
// measures a chain of the longest length allowed (50 sets, 58 KiB of
// header fields): 205–207 KiB a message since session 10, MessageWorkBytes
// plus 0.8 times its size (under the race detector 214 KiB, 1.0 times), so two copies
// leave a quarter to spare. Session 9 had measured 292 KiB, 2.3 times, and
// charged three: the seals' and signatures' tags were then maps of
// strings copied from the fields (about 116 KiB for such a chain); they
// are now spans of the message's bytes (arc's tagList). Until session 9
// the pipeline charged one copy, which a chain of 50 sets overran.
const MessageCopies = 2
