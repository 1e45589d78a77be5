import pytest

from tests.helpers import prune


@pytest.fixture(scope="session")
def resnet_run(tmp_path_factory):
    """test_resnet (timm's tiny ResNet) trained briefly on digits and pruned with defaults."""
    out = tmp_path_factory.mktemp("runs") / "resnet"
    return prune(out, "--model", "test_resnet", "--train-epochs", "3", "--finetune-epochs", "1",
                 "--finetune-top", "1", "--img-size", "24")
