"""CRC-32 (the ZIP checksum) of a concatenation, from the CRCs of its parts.

Workers checksum the pixels they write; the parent only has to combine those
small numbers in row order to get the checksum of a whole archive member,
without reading a byte of pixel data back.

The arithmetic: a CRC-32 is the remainder of the message polynomial modulo the
CRC polynomial, over GF(2), in bit-reflected order (bit 31 is x^0). Appending
``n`` bytes to a message multiplies its contribution by x^(8n), so

    crc(A + B) = (crc(A) * x^(8 * len(B)) mod P) xor crc(B).

The pre- and post-conditioning of CRC-32 (init and final xor with 0xFFFFFFFF)
cancel out in this identity.
"""
from functools import lru_cache

_POLY = 0xEDB88320  # CRC-32 polynomial, bit-reflected
_X0 = 1 << 31       # the polynomial "1" (x^0) in reflected order


def _multiply_mod_p(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial, both in reflected order."""
    product = 0
    bit = _X0
    while bit:
        if a & bit:
            product ^= b
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _powers_of_x_squared() -> list[int]:
    """x^(2^k) mod P for k = 0..63."""
    powers = [_X0 >> 1]  # x^1
    for _ in range(63):
        powers.append(_multiply_mod_p(powers[-1], powers[-1]))
    return powers


_X_POW_2K = _powers_of_x_squared()


@lru_cache(maxsize=64)
def _x_pow_8n(n: int) -> int:
    """x^(8n) mod P, by square-and-multiply over the bits of n."""
    result = _X0
    k = 3  # 8n = n * 2^3
    while n:
        if n & 1:
            result = _multiply_mod_p(_X_POW_2K[k], result)
        n >>= 1
        k += 1
    return result


def crc32_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """CRC-32 of A + B, given crc32(A), crc32(B) and len(B) in bytes."""
    if length_b == 0:
        return crc_a
    return _multiply_mod_p(_x_pow_8n(length_b), crc_a) ^ crc_b



def crc32_of_parts(crcs, length: int) -> int:
    """CRC-32 of consecutive parts of ``length`` bytes each, from the parts' CRCs."""
    crc = 0  # the CRC of no bytes
    for part in crcs:
        crc = crc32_combine(crc, int(part), length)
    return crc
