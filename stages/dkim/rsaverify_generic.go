//go:build !amd64 || purego

package dkim

import "math/big"

// useMont is false: without the assembly kernels, Barrett reduction via
// math/big is faster than a Montgomery reduction in Go.
var useMont = false

func montRedc(z, t, n []big.Word, n0inv big.Word) {
	montRedcGeneric(z, t, n, n0inv)
}

func sqrWords(z, x []big.Word) {
	sqrGeneric(z, x)
}
