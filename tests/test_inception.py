"""The Flax FID Inception against pytorch-fid's, on the same random weights saved with torch.save.

Needs the test-only PyTorch peer: ``pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid``
(``.ci/run`` installs it; without it the test skips)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pfid = pytest.importorskip("pytorch_fid.inception")

import jax  # noqa: E402

from diffusion.models import inception  # noqa: E402


def random_fid_inception():
    """pytorch-fid's network (``fid_inception_v3`` without the download) with random weights
    and batch-norm statistics far from identity, so every parameter's mapping matters."""
    torch.manual_seed(0)
    net = pfid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfid.FIDInceptionE_1(1280)
    net.Mixed_7c = pfid.FIDInceptionE_2(2048)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, (2 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.02)
                m.bias.normal_(0, 0.1)
    return net.eval()


def test_flax_fid_inception_matches_pytorch_fid(tmp_path, monkeypatch):
    net = random_fid_inception()
    path = tmp_path / "pt_inception_random.pth"
    torch.save(net.state_dict(), path)
    monkeypatch.setattr(pfid, "fid_inception_v3", lambda: net)
    reference = pfid.InceptionV3([3]).eval()          # resizes to 299 and maps [0, 1] → [−1, 1]

    images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)   # [0, 1], NHWC
    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2))
        ref_pool = reference(x)[0][:, :, 0, 0].numpy()
        ref_logits = net.fc(torch.from_numpy(ref_pool)).numpy()

    model, params = inception.load_fid_inception(path)
    pool, logits = jax.jit(lambda p, x: model.apply({"params": p}, inception.resize_for_inception(x)))(
        params, 2 * images - 1)
    pool, logits = np.asarray(pool), np.asarray(logits)
    rel = np.abs(pool - ref_pool).max() / np.abs(ref_pool).max()
    print(f"pool3 max relative error {rel:.2e}")
    assert pool.shape == (3, 2048) and rel < 1e-4
    assert np.abs(logits - ref_logits).max() / np.abs(ref_logits).max() < 1e-4


def test_a_state_dict_of_another_network_is_refused(tmp_path):
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(16, 3, 3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"Conv2d_1a_3x3.conv.weight \(3, 3, 3, 16\) does not fit"):
        inception.load_fid_inception(tmp_path / "wrong.pth")
