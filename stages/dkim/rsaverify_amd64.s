//go:build amd64 && !purego

#include "textflag.h"

// Word-level kernels of the Montgomery exponentiation in rsaverify.go, for
// CPUs with BMI2 (MULX) and ADX (ADCX, ADOX). The inner loops add a
// multiple of a vector to another one: for each word, MULXQ (which leaves
// the flags alone) multiplies by DX; ADCXQ (carry chain CF) adds the high
// word of the previous product, ADOXQ (carry chain OF) the destination
// word. The loop counter clobbers the flags, so both chains are folded
// into the carry word BX after each group of 1, 2, 4 or 8 words (this
// cannot overflow: the carry out of a partial row sum fits in a word).
//
// Row registers: DX multiplier, R12 source, R13 destination, CX length,
// BX carry word (in and out), AX R8 R9 temporaries. R12 and R13 advance
// past the row.

// MADD: *(R13+off) += *(R12+off)·DX + c; lo, hi temporaries; hi is the
// next c (with CF and OF pending).
#define MADD(off, lo, hi, c) \
	MULXQ off(R12), lo, hi; \
	ADCXQ c, lo;            \
	ADOXQ off(R13), lo;     \
	MOVQ  lo, off(R13)

// FOLD: BX = c + CF + OF.
#define FOLD(c) \
	MOVQ  $0, AX;  \
	ADCXQ AX, c;   \
	ADOXQ AX, c;   \
	MOVQ  c, BX

#define MADD1 \
	XORQ AX, AX;          \
	MADD(0, AX, R8, BX);  \
	FOLD(R8);             \
	LEAQ 8(R12), R12;     \
	LEAQ 8(R13), R13

#define MADD2 \
	XORQ AX, AX;          \
	MADD(0, AX, R8, BX);  \
	MADD(8, R9, BX, R8);  \
	FOLD(BX);             \
	LEAQ 16(R12), R12;    \
	LEAQ 16(R13), R13

#define MADD4 \
	XORQ AX, AX;          \
	MADD(0, AX, R8, BX);  \
	MADD(8, R9, BX, R8);  \
	MADD(16, AX, R8, BX); \
	MADD(24, R9, BX, R8); \
	FOLD(BX);             \
	LEAQ 32(R12), R12;    \
	LEAQ 32(R13), R13

#define MADD8 \
	XORQ AX, AX;          \
	MADD(0, AX, R8, BX);  \
	MADD(8, R9, BX, R8);  \
	MADD(16, AX, R8, BX); \
	MADD(24, R9, BX, R8); \
	MADD(32, AX, R8, BX); \
	MADD(40, R9, BX, R8); \
	MADD(48, AX, R8, BX); \
	MADD(56, R9, BX, R8); \
	FOLD(BX);             \
	LEAQ 64(R12), R12;    \
	LEAQ 64(R13), R13

// func montRedcADX(z, t, n []big.Word, n0inv big.Word)
//
// For each of the s = len(n) rows i: m = t[i]·n0inv, t[i:i+s] += m·n,
// t[i+s] += the row's carry word and the top carry (R11). Then
// z = top:t[s:2s] - n if that is not negative, else z = t[s:2s].
//
// DI &t[i], R10 rows left, R11 top carry, plus the row registers.
TEXT ·montRedcADX(SB), NOSPLIT, $0-80
	MOVQ  n_len+56(FP), R10
	TESTQ R10, R10
	JZ    done
	MOVQ  t_base+24(FP), DI
	XORQ  R11, R11

row:
	MOVQ  0(DI), DX
	IMULQ n0inv+72(FP), DX
	MOVQ  n_base+48(FP), R12
	MOVQ  DI, R13
	XORQ  BX, BX
	MOVQ  n_len+56(FP), CX
	TESTQ $1, CX
	JZ    row2
	MADD1

row2:
	TESTQ $2, CX
	JZ    row4
	MADD2

row4:
	TESTQ $4, CX
	JZ    row8
	MADD4

row8:
	SHRQ $3, CX
	JZ   rowdone

loop8:
	MADD8
	DECQ CX
	JNZ  loop8

rowdone:
	// R13 = &t[i+s]: add BX and R11, carry out into R11.
	XORQ AX, AX
	ADDQ R11, BX
	ADCQ $0, AX
	ADDQ BX, 0(R13)
	ADCQ $0, AX
	MOVQ AX, R11
	LEAQ 8(DI), DI
	DECQ R10
	JNZ  row

	// DI = &t[s]. z = t[s:] - n, borrow in CF.
	MOVQ z_base+0(FP), R9
	MOVQ n_base+48(FP), R12
	MOVQ n_len+56(FP), CX
	MOVQ DI, R13
	XORQ AX, AX // clears CF

sub:
	MOVQ 0(R13), AX
	SBBQ 0(R12), AX
	MOVQ AX, 0(R9)
	LEAQ 8(R13), R13
	LEAQ 8(R12), R12
	LEAQ 8(R9), R9
	DECQ CX // keeps CF
	JNZ  sub

	SBBQ AX, AX
	NEGQ AX
	CMPQ AX, R11
	JEQ  done // top:t[s:] >= n: z is the difference

	// top:t[s:] < n: z = t[s:].
	MOVQ z_base+0(FP), R9
	MOVQ n_len+56(FP), CX

copy:
	MOVQ 0(DI), AX
	MOVQ AX, 0(R9)
	LEAQ 8(DI), DI
	LEAQ 8(R9), R9
	DECQ CX
	JNZ  copy

done:
	RET

// func sqrADX(z, x []big.Word)
//
// z = x², len(z) = 2·len(x). The products x[i]·x[j], j > i, are summed
// row by row (row i: z[2i+1:i+s] += x[i]·x[i+1:s], z[i+s] = carry), then
// doubled (ADCX chain) and the squares x[i]² added (ADOX chain).
//
// DI &x[i], SI &z[2i+1], R10 row length s-1-i, plus the row registers.
TEXT ·sqrADX(SB), NOSPLIT, $0-48
	MOVQ  x_len+32(FP), R10
	TESTQ R10, R10
	JZ    done

	// z = 0
	MOVQ z_base+0(FP), SI
	MOVQ R10, CX
	SHLQ $1, CX
	XORQ AX, AX

clear:
	MOVQ AX, 0(SI)
	LEAQ 8(SI), SI
	DECQ CX
	JNZ  clear

	MOVQ x_base+24(FP), DI
	MOVQ z_base+0(FP), SI
	LEAQ 8(SI), SI
	DECQ R10
	JZ   diag

row:
	MOVQ  0(DI), DX
	LEAQ  8(DI), R12
	MOVQ  SI, R13
	XORQ  BX, BX
	MOVQ  R10, CX
	TESTQ $1, CX
	JZ    row2
	MADD1

row2:
	TESTQ $2, CX
	JZ    row4
	MADD2

row4:
	TESTQ $4, CX
	JZ    row8
	MADD4

row8:
	SHRQ $3, CX
	JZ   rowdone

loop8:
	MADD8
	DECQ CX
	JNZ  loop8

rowdone:
	MOVQ BX, 0(R13)
	LEAQ 8(DI), DI
	LEAQ 16(SI), SI
	DECQ R10
	JNZ  row

diag:
	// z = 2z + Σ x[i]²·2^(128i); the total is x² < 2^(128s), so no
	// carry leaves the top. The loop keeps CF and OF (LEAQ, JCXZQ).
	MOVQ x_base+24(FP), DI
	MOVQ z_base+0(FP), SI
	MOVQ x_len+32(FP), CX
	XORQ AX, AX // clears CF and OF

diagloop:
	MOVQ  0(DI), DX
	MULXQ DX, R8, R9
	MOVQ  0(SI), AX
	MOVQ  8(SI), BX
	ADCXQ AX, AX
	ADCXQ BX, BX
	ADOXQ R8, AX
	ADOXQ R9, BX
	MOVQ  AX, 0(SI)
	MOVQ  BX, 8(SI)
	LEAQ  8(DI), DI
	LEAQ  16(SI), SI
	LEAQ  -1(CX), CX
	JCXZQ done
	JMP   diagloop

done:
	RET
