"""The same commands on a plain folder: `file://PATH`, an OCI image layout on disk (for teams
without a registry), read back by oras-py's own layout validator."""
from __future__ import annotations

import hashlib
import json

from shipping_cli import edgepack, snapshot


def test_push_ls_pull_through_an_oci_layout_folder(tiny_bundle, signing_keys, tmp_path):
    import oras.layout

    layout = tmp_path / "bundles"
    res = edgepack("push", tiny_bundle["zip"], f"file://{layout}:1.0")
    assert res.exit_code == 0, res.output
    digest = next(line.split()[1] for line in res.output.splitlines() if line.startswith("digest: "))
    assert (layout / "oci-layout").is_file() and (layout / "blobs" / "sha256" / digest[7:]).is_file()
    oras.layout.Layout(str(layout)).validate()                     # a layout other OCI tools read
    index = json.loads((layout / "index.json").read_text())
    assert {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]} == \
        {"1.0", "tflite-int8", "tflite-int8-1.0"}

    rows = json.loads(edgepack("ls", f"file://{layout}", "--json").output)
    assert {r["tag"] for r in rows} == {"1.0", "tflite-int8", "tflite-int8-1.0"}
    assert all(r["digest"] == digest and r["target"] == "tflite-int8" and r["signed"] for r in rows)

    for ref in (f"file://{layout}:tflite-int8", f"file://{layout}@{digest}"):
        out = tmp_path / ref[-8:]
        res = edgepack("pull", ref, "--out", out, "--key", signing_keys["public"])
        assert res.exit_code == 0, res.output
        assert (out / tiny_bundle["zip"].name).read_bytes() == tiny_bundle["zip"].read_bytes()


def test_a_blob_changed_in_the_layout_is_refused(tiny_bundle, signing_keys, tmp_path):
    layout = tmp_path / "bundles"
    assert edgepack("push", tiny_bundle["zip"], f"file://{layout}:1.0").exit_code == 0
    report = (tiny_bundle["tree"] / "report.json").read_bytes()
    blob = layout / "blobs" / "sha256" / hashlib.sha256(report).hexdigest()
    blob.write_bytes(report.replace(b'"passed": true', b'"passed": fals'))      # same size, another verdict
    out = tmp_path / "out"
    res = edgepack("pull", f"file://{layout}:1.0", "--out", out, "--key", signing_keys["public"])
    assert res.exit_code == 2 and "report.json: the blob received has sha256:" in res.output, res.output
    assert not out.exists()
    before = snapshot(layout)
    res = edgepack("pull", f"file://{tmp_path / 'nowhere'}:1.0", "--out", out)
    assert res.exit_code == 2 and "no such folder" in res.output
    assert snapshot(layout) == before and not (tmp_path / "nowhere").exists()
