"""model.compile: the networks run through torch.compile, checkpoints keep their names."""

import pytest

from osr.train import train
from osr.utils.checkpoints import read_checkpoint


@pytest.mark.slow
def test_compiled_networks_train_and_checkpoint_under_their_own_names(train_cfg, tmp_path):
    _, objects = train(
        train_cfg(
            "model=baseline",
            "model.compile=true",
            "data.drop_last=true",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
        )
    )
    net = objects["model"].net
    assert net._compiled_call_impl is not None  # calls go through torch.compile
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")["state_dict"]
    assert "net.fc2.weight" in saved and not any("_orig_mod" in k for k in saved)


def test_a_bad_compile_value_is_named():
    from osr.modules import Classifier
    from osr.utils.errors import OSRError
    from tests.test_models import CLASSES, OPTIMIZER

    with pytest.raises(OSRError, match="model.compile=3: use false, true or a torch.compile"):
        Classifier({"_target_": "osr.models.ConvNet"}, OPTIMIZER, CLASSES, compile=3)
