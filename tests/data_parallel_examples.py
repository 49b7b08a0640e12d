"""Methods that claim data parallelism wrongly, for tests/test_contract.py's data-parallel case.
They live in a module of their own because the check's processes import them by path
(`data_parallel_examples:Class`); nothing registers them in the test process."""

import torch
import torch.nn.functional as F

from domainbed.algorithms.vrex import VREx


class PerShareRisksVREx(VREx):
    """VREx whose per-domain risks are each process's share's: their variance is not the whole
    batch's, so the update on two processes differs from the one on the whole batch."""

    DATA_PARALLEL = True

    def objective(self, minibatches, lambda_t):
        risks = torch.stack([F.cross_entropy(self.predict(x), y) for x, y in minibatches])
        penalty = ((risks - risks.mean()) ** 2).mean()
        return risks.mean() + lambda_t * penalty, {"penalty": penalty}
