"""Independent writings of what the product computes, kept out of the product: the tests compare the
product against them (byte for byte where they write files)."""
