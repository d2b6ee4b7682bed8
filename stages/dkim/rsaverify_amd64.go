//go:build amd64 && !purego

package dkim

import (
	"math/big"

	"golang.org/x/sys/cpu"
)

// useMont selects the Montgomery exponentiation for odd moduli; its
// assembly kernels need the MULX, ADCX and ADOX instructions.
var useMont = cpu.X86.HasBMI2 && cpu.X86.HasADX

// montRedcADX is montRedcGeneric in assembly, for CPUs with BMI2 and ADX.
//
//go:noescape
func montRedcADX(z, t, n []big.Word, n0inv big.Word)

// sqrADX is sqrGeneric in assembly, for CPUs with BMI2 and ADX.
//
//go:noescape
func sqrADX(z, x []big.Word)

// montRedc is montRedcGeneric; it is called only if useMont.
func montRedc(z, t, n []big.Word, n0inv big.Word) {
	montRedcADX(z, t, n, n0inv)
}

// sqrWords is sqrGeneric; it is called only if useMont.
func sqrWords(z, x []big.Word) {
	sqrADX(z, x)
}
