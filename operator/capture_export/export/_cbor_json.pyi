# The optional native JSON Lines and Parquet paths (_cbor_json.c), built by hatch_build.py where a C compiler
# exists.

SOURCE_SHA256: str

def json_line(body: bytes | memoryview, record_id: int, /) -> bytes | None: ...
def parquet_capture(body: bytes | memoryview, /) -> tuple[bytes, bytes | None, bytes | None, bytes | None] | None: ...
