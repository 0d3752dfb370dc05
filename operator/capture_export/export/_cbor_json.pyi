# The optional native paths (_cbor_json.c: JSON Lines, the privacy prefilter), built by hatch_build.py where a C
# compiler exists.

SOURCE_SHA256: str

def json_line(body: bytes | memoryview, record_id: int, /) -> bytes | None: ...
def privacy_prefilter(body: bytes | memoryview, /) -> bytes | None: ...
