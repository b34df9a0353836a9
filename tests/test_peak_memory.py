"""PeakMemory measures the block's own peak, against allocations of known size."""

import numpy as np

from soraj.eval.peak_memory import PeakMemory

MB = 2**20


def test_peak_is_the_blocks_allocation_not_an_earlier_larger_one():
    earlier = np.ones(400 * MB // 8)  # touched pages: 400 MB resident, then freed
    del earlier
    with PeakMemory() as peak:
        block = np.ones(100 * MB // 8)  # 100 MB, freed inside the block: only the peak sees it
        del block
    assert peak.kind == "process peak RSS"
    # A few of the block's pages may already be resident (allocator reuse): hence 95, not 100.
    assert 95 * MB <= peak.bytes < 130 * MB
