"""Mask bit values (``Mask.bits`` and the MASKBITS extension)."""

NEIGHBOUR = 1
BAD = 2
OFF_FRAME = 4
USER = 8
SATURATED = 16

#: bit -> (FITS keyword, meaning); written to the MASKBITS header
MASK_BITS = {
    NEIGHBOUR: ("BIT_NBR", "neighbouring source (grown segment)"),
    BAD: ("BIT_BAD", "bad or non-finite pixel"),
    OFF_FRAME: ("BIT_OFF", "outside the parent frame"),
    USER: ("BIT_USER", "masked by the user"),
    SATURATED: ("BIT_SAT", "saturated pixel"),
}
