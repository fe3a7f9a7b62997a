"""The library lines a user cannot act on are dropped at their logger; the rest of that logger still shows."""

import io
import logging

from stable_diffusion_xl.weights.library_logs import quiet_library_logs


def test_only_the_noise_is_dropped_and_errors_always_pass():
    quiet_library_logs()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("huggingface_hub.utils._http")
    logger.addHandler(handler)
    try:
        logger.warning("Retrying in 1s [Retry 1/5].")
        logger.warning("something else the hub says")
        logger.error("Retrying in 1s: but as an error")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["something else the hub says", "Retrying in 1s: but as an error"]


def test_the_instill_sdks_format_prints_the_milliseconds_once():
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-8s %(message)s"))  # the SDK's
    root.addHandler(handler)
    try:
        quiet_library_logs()
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello", None, None)
        line = handler.formatter.format(record)
    finally:
        root.removeHandler(handler)
    stamp, level, message = line.split(maxsplit=3)[1:]
    assert stamp.count(".") == 1 and "," not in stamp and (level, message) == ("WARNING", "hello")
