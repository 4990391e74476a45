"""The dynamic symbols a shared library defines, read from its ELF file (64-bit little-endian).

Lets a tool ask "does this libtrimalloc export tm_stats_json?" without loading a malloc replacement
into its own process."""
import struct


class NotELF(ValueError):
    pass


def defined_symbols(path):
    """Names of the global/weak symbols the library's .dynsym defines (not the undefined ones)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise NotELF("%s is not a 64-bit little-endian ELF file" % path)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for sec in sections:
        sh_type, offset, size, link, entsize = sec[1], sec[4], sec[5], sec[6], sec[9]
        if sh_type != 11 or entsize == 0:  # SHT_DYNSYM
            continue
        strtab_off = sections[link][4]
        for i in range(1, size // entsize):
            st_name, st_info, _other, st_shndx = struct.unpack_from("<IBBH", data, offset + i * entsize)
            bind = st_info >> 4
            if st_shndx == 0 or bind not in (1, 2):  # undefined, or local
                continue
            end = data.index(b"\0", strtab_off + st_name)
            names.add(data[strtab_off + st_name:end].decode("ascii", "replace"))
    return names
