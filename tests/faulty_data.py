"""Datasets that fail on purpose, importable by spawned data-parallel workers (tests only)."""

import os
import time

from npmaskrcnn.shapes import ShapesDataset


class FailInWorker:
    """Shapes whose item `at`, read in a process other than `main_pid`, kills that process
    (how="die") or makes it hang (how="hang")."""

    def __init__(self, at, main_pid, how="die", n=16):
        self.data = ShapesDataset(n, seed=0, image_size=32, min_size=8, max_size=20)
        self.at, self.main_pid, self.how = at, main_pid, how

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.at and os.getpid() != self.main_pid:
            if self.how == "die":
                os._exit(9)
            time.sleep(3600)
        return self.data[i]
