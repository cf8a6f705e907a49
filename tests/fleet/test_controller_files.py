"""The rollout bundle server: only known rollouts, only files inside their bundle directory."""

from __future__ import annotations

import http.client
import os
from pathlib import Path

from agent.config.fleet import BundleServerConfig
from agent.fleet.controller.files import RolloutFileServer, bundle_dir

RID = "0123456789ab"


def _get(port: int, method: str, path: str) -> tuple[int, bytes, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Length")
    finally:
        conn.close()


def test_serves_listed_files_of_known_rollouts_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    files = bundle_dir(state, RID)
    (files / "sub").mkdir(parents=True)
    (files / "model.yaml").write_text("name: m\n")
    (files / "sub" / "w.bin").write_bytes(b"\x00" * 1000)
    (state / "secret.txt").write_text("no")
    os.symlink(state / "secret.txt", files / "link.txt")
    other = bundle_dir(state, "ba9876543210")
    other.mkdir(parents=True)
    (other / "model.yaml").write_text("other\n")
    asked: list[str] = []

    def known(rollout_id: str) -> bool:
        asked.append(rollout_id)
        return rollout_id == RID

    cfg = BundleServerConfig(host="127.0.0.1", port=0, advertise_host="fleet.example")
    server = RolloutFileServer(cfg, state, known)
    server.start()
    try:
        assert server.base_url(RID) == f"http://fleet.example:{server.port}/r/{RID}"
        port = server.port
        assert _get(port, "GET", f"/r/{RID}/model.yaml") == (200, b"name: m\n", "8")
        assert _get(port, "HEAD", f"/r/{RID}/sub/w.bin") == (200, b"", "1000")
        assert _get(port, "GET", f"/r/{RID}/sub%2Fw.bin")[0] == 200
        for path in (
            f"/r/{RID}/link.txt",
            f"/r/{RID}/../secret.txt",
            f"/r/{RID}/%2e%2e/secret.txt",
            f"/r/{RID}/sub/../../../secret.txt",
            f"/r/{RID}//etc/passwd",
            f"/r/{RID}/",
            f"/r/{RID}",
            "/r/ba9876543210/model.yaml",  # on disk, but not a rollout of the store
            "/r/../state/secret.txt",
            "/r/UPPERCASE123/model.yaml",
            "/secret.txt",
        ):
            assert _get(port, "GET", path)[0] == 404, path
        assert "UPPERCASE123" not in asked  # ids that cannot be rollouts never reach the store
    finally:
        server.stop()
