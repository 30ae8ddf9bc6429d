"""S3BlobStore against a real S3 API (moto in server mode): the shared contract, plus what is
specific to a bucket (layout, direct uploads, S3 going away)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from lfsserve.blobstore import HashMismatch, Status, open_store
from lfsserve.blobstore.s3 import S3BlobStore
from lfsserve.config import load_config
from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY

from .blobstore_contract import BlobStoreContract, chunks_of, collect, oid_of

pytestmark = pytest.mark.interop  # talks to a moto server process


def _store(moto, bucket: str, **kwargs) -> S3BlobStore:
    return S3BlobStore(bucket, endpoint_url=moto.url, region=REGION, addressing_style="path",
                       access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **kwargs)


@pytest.fixture
async def store(moto):
    s = _store(moto, moto.create_bucket(), prefix="pre/")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def damage(store, moto):
    """Overwrite the object with one flipped byte, the way another tool writing the bucket would."""
    def corrupt(oid: str) -> None:
        c = moto.client()
        data = bytearray(c.get_object(Bucket=store.bucket, Key=store.key(oid))["Body"].read())
        data[len(data) // 2] ^= 0xFF
        c.put_object(Bucket=store.bucket, Key=store.key(oid), Body=bytes(data))
    return corrupt


@pytest.fixture
def touch(store, moto):
    """Rewrite the object with the same bytes but without this store's verification mark."""
    def rewrite(oid: str) -> None:
        c = moto.client()
        data = c.get_object(Bucket=store.bucket, Key=store.key(oid))["Body"].read()
        c.put_object(Bucket=store.bucket, Key=store.key(oid), Body=data)
    return rewrite


class TestS3BlobStore(BlobStoreContract):
    pass


def _keys(moto, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket).get("Contents", ()))


async def test_layout_multipart_and_no_leftovers(moto):
    bucket = moto.create_bucket()
    store = _store(moto, bucket, prefix="team/")
    await store.open()
    try:
        big = os.urandom(17 * 1024 * 1024 + 3)  # three parts of a multipart upload
        oid = oid_of(big)
        assert (await store.put(oid, chunks_of(big, 100_000))).created
        assert _keys(moto, bucket) == [f"team/lfs/objects/{oid[:2]}/{oid[2:4]}/{oid}"]
        handle = await store.get(oid)
        assert handle.verified and handle.path is None
        assert await collect(store, handle, 9 * 1024 * 1024, 9 * 1024 * 1024 + 10) == big[9 << 20:(9 << 20) + 10]
        # A multipart upload whose content does not match is aborted: no parts stay behind.
        bad = bytearray(big)
        bad[-1] ^= 1
        other = oid_of(b"not this")
        with pytest.raises(HashMismatch):
            await store.put(other, chunks_of(bytes(bad), 1 << 20))
        assert moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert _keys(moto, bucket) == [store.key(oid)]
    finally:
        await store.close()


def test_open_store_builds_s3_from_config(tmp_path, moto):
    cfg = tmp_path / "c.toml"
    cfg.write_text(moto.storage_toml("some-bucket", transfer="direct", prefix="p/"))
    store = open_store(load_config(cfg, env={"LFSSERVE_ROOT": str(tmp_path)}))
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix, store.transfer) == ("some-bucket", "p/", "direct")


async def test_direct_upload_is_invisible_until_promoted(moto):
    import aiohttp

    bucket = moto.create_bucket()
    store = _store(moto, bucket, transfer="direct")
    await store.open()
    try:
        data = os.urandom(300_000)
        oid = oid_of(data)
        url, headers = await store.presign_upload(oid, len(data), "team/app")
        async with aiohttp.ClientSession() as http:
            async with http.put(url, data=data, headers=headers) as r:
                assert r.status == 200
        assert (await store.state(oid)).status is Status.MISSING  # staged, not an object yet
        assert await store.promote_staged([oid], "other/repo") == {}  # not staged for that owner
        assert await store.promote_staged([oid], "team/app") == {oid: (Status.OK, len(data))}
        assert (await store.state(oid)).status is Status.OK
        assert _keys(moto, bucket) == [store.key(oid)]
        # A staged upload that does not match its oid is dropped, never installed.
        liar = oid_of(b"claimed")
        url, headers = await store.presign_upload(liar, 5, "team/app")
        async with aiohttp.ClientSession() as http:
            async with http.put(url, data=b"other") as r:
                assert r.status == 200
        assert await store.promote_staged([liar], "team/app") == {liar: (Status.MISSING, 0)}
        assert _keys(moto, bucket) == [store.key(oid)]
    finally:
        await store.close()


def test_bundle_store_in_the_bucket(moto, tmp_path, monkeypatch):
    """The clone bundle store on S3: the BundleStore interface, keys under <prefix>clonebundles/,
    a multipart upload for large files, presigned GETs; S3 failures become StorageUnavailable."""
    import urllib.request

    from lfsserve.blobstore import StorageUnavailable, s3bundles
    from lfsserve.blobstore.bundles import BundleStoreBusy, bundle_key
    from lfsserve.config import StorageConfig

    bucket = moto.create_bucket()
    st = StorageConfig(backend="s3", bucket=bucket, prefix="p/", endpoint_url=moto.url, region=REGION,
                       addressing_style="path", access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    store = s3bundles.S3BundleStore(st, tmp_path / "cb")
    key = bundle_key("team/app", "zstd-v2-3-abc.hg")
    assert store.read_small(bundle_key("team/app", "index.json")) is None and not store.exists(key)
    assert store.open_read(key) is None and store.names("team/app") == []

    monkeypatch.setattr(s3bundles, "SINGLE_PUT_LIMIT", 4 << 20)  # the multipart path, cheaply
    monkeypatch.setattr(s3bundles, "PART", 5 << 20)
    data = os.urandom((5 << 20) + 5)  # two parts
    with store.exclusive("team/app"):
        with pytest.raises(BundleStoreBusy):
            with s3bundles.S3BundleStore(st, tmp_path / "cb").exclusive("team/app"):
                pass
        tmp = store.temp_dir("team/app") / ".build-x"
        tmp.write_bytes(data)
        store.install(key, tmp)
        assert not tmp.exists()
        store.write_small(bundle_key("team/app", "index.json"), b"{}")
    c = moto.client()
    assert c.get_object(Bucket=bucket, Key="p/clonebundles/" + key)["Body"].read() == data
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert store.exists(key) and store.local_path(key) is None
    assert sorted(n for n, _ in store.names("team/app")) == ["index.json", "zstd-v2-3-abc.hg"]
    assert store.names("team") == []  # only the repository's own files
    fh, size = store.open_read(key)
    with fh:
        assert size == len(data) and fh.read() == data
    # presigned bucket URLs only in direct mode (in proxy mode clients may not reach the bucket)
    assert store.presigned_url(key, 60) is None
    direct = s3bundles.S3BundleStore(dataclasses.replace(st, transfer="direct"), tmp_path / "cb")
    url = direct.presigned_url(key, 60)
    assert url is not None
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.read() == data
    store.delete(key)
    store.delete(key)  # absent is fine
    assert not store.exists(key) and store.read_small(bundle_key("team/app", "index.json")) == b"{}"
    with pytest.raises(ValueError):
        store.read_small("../x")

    gone = StorageConfig(**{**st.__dict__, "endpoint_url": "http://127.0.0.1:9", "read_timeout": 1.0})
    down = s3bundles.S3BundleStore(gone, tmp_path / "cb")
    with pytest.raises(StorageUnavailable):
        down.read_small(bundle_key("team/app", "index.json"))
