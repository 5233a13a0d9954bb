import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fireact"


@pytest.fixture(autouse=True, scope="session")
def _fireact_data():
    """Tests read FireAct's release from ../shared (the data-directory setting), never from the network."""
    if not os.environ.get("FIREACT_DATA_DIR"):
        os.environ["FIREACT_DATA_DIR"] = str(SHARED)
    yield
