"""The local Dask cluster of ``pointsam batch`` (pointsam_engine.batch.cluster)."""

import logging

from pointsam_engine.batch.cluster import close_client, start_client


def _log_an_error():
    logging.getLogger("distributed.worker").error("Failed to communicate with scheduler during heartbeat (test)")


def test_local_workers_log_into_the_work_folder_not_the_terminal(tmp_path, capfd):
    """A worker held up while the batch shuts down logs a lost heartbeat: it lands in the file, and the terminal
    keeps the batch's own one line."""
    log = tmp_path / "workers.log"
    client = start_client(1, None, worker_log=log)
    try:
        client.run(_log_an_error)
    finally:
        close_client(client)
    assert "heartbeat (test)" in log.read_text() and "ERROR" in log.read_text()
    captured = capfd.readouterr()
    assert "heartbeat" not in captured.err + captured.out
