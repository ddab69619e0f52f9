"""Worker for tests/test_distributed.py, run as `mpirun -n 2 python tests/dist_worker.py MODE OUT`
(and imported by the test for the one-process reference runs). Not collected by pytest.

MODE: equiv     train the canonical CNN and an LSTM with fit(distributed=True) at batch
                64 // size per rank; rank 0 writes the weights to OUT (npz)
      mismatch  rank 1 builds a different model: fit must raise RuntimeError on every rank
      datamismatch  rank 1 passes its data in another order: the same
      kill      rank 1 dies (os._exit(9)) in the middle of training: mpirun must end the job
      sigkill   rank 1 is killed by SIGKILL in the middle of training
      raise     rank 1 raises an uncaught exception mid-training: the excepthook aborts the job
      hang      rank 1 stops answering (sleeps) mid-training: the others' watchdog aborts
      gpu       equiv on 'cuda' with NCCL (one GPU per rank)
"""
import os
import signal
import sys
import time

import numpy as np


GLOBAL_BATCH = 64
N_CNN, N_RNN = 251, 203      # not multiples of 64: the last global batch is partial and uneven


def data_cnn():
    rs = np.random.default_rng(0)
    return rs.random((N_CNN, 28, 28, 1), dtype=np.float32), rs.integers(0, 10, N_CNN)


def data_rnn():
    rs = np.random.default_rng(1)
    return rs.standard_normal((N_RNN, 12, 5)).astype(np.float32), rs.integers(0, 3, N_RNN)


def cnn():
    from kilnet.cli import canonical_model
    return canonical_model()


def rnn(units=16):
    from kilnet.layers import LSTM, Dense
    from kilnet.models import Sequential
    m = Sequential([LSTM(units, input_shape=(12, 5)), Dense(3, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def train(build, data, batch_size, distributed, epochs=2, init_seed=1, device=None, **kw):
    """Build with init_seed, then fit with the shuffle seed 2 (rank 0's draws are the ones used)."""
    from kilnet.utils import set_random_seed
    set_random_seed(init_seed)
    model = build()
    if device:
        model.to(device)
    x, y = data()
    set_random_seed(2)
    hist = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True,
                     distributed=distributed, **kw)
    return model, hist.history


def main():
    mode, out = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
    from kilnet import distributed as dist
    r, size = dist.init()
    device = None
    if mode == "gpu":
        dist.use_local_gpu()
        device = "cuda"
    if mode in ("equiv", "gpu"):
        # Each rank starts from different weights on purpose: rank 0's must be broadcast.
        from kilnet.callbacks import ModelCheckpoint
        ckpt = ModelCheckpoint(f"{out}.rank{r}.h5", monitor="val_loss")   # only rank 0 may write
        m1, h1 = train(cnn, data_cnn, GLOBAL_BATCH // size, True, init_seed=1 + r, device=device,
                       validation_split=0.2, callbacks=[ckpt])
        m2, h2 = train(rnn, data_rnn, GLOBAL_BATCH // size, True, init_seed=1 + r, device=device)
        w1 = m1._params if isinstance(m1._params, np.ndarray) else m1._params.get()
        w2 = m2._params if isinstance(m2._params, np.ndarray) else m2._params.get()
        # every rank must hold the same weights: compare with rank 0's
        from mpi4py import MPI
        for w in (w1, w2):
            ref = w.copy()
            MPI.COMM_WORLD.Bcast(ref, root=0)
            assert np.array_equal(ref, w), f"rank {r}: weights differ from rank 0's"
        if r == 0:
            np.savez(out, cnn=w1, rnn=w2, cnn_loss=np.array(h1["loss"]), rnn_loss=np.array(h2["loss"]),
                     cnn_acc=np.array(h1["accuracy"]), cnn_val_loss=np.array(h1["val_loss"]),
                     cnn_val_acc=np.array(h1["val_accuracy"]))
    elif mode in ("mismatch", "datamismatch"):
        def shuffled_data():   # the same arrays in another order
            x, y = data_cnn()
            return x[::-1].copy(), y[::-1].copy()
        try:
            if mode == "mismatch":
                train(cnn if r == 0 else _other_cnn, data_cnn, 32, True, epochs=1)
            else:
                train(cnn, data_cnn if r == 0 else shuffled_data, 32, True, epochs=1)
        except RuntimeError as e:
            print(f"rank {r} RuntimeError: {e}", flush=True)
            sys.exit(3)
        print(f"rank {r}: no error", flush=True)
    elif mode in ("kill", "sigkill", "raise", "hang"):
        from kilnet.callbacks import LambdaCallback

        def on_batch(batch, logs):
            if r == 1 and batch == 2:
                if mode == "kill":
                    os._exit(9)
                if mode == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if mode == "raise":
                    raise ValueError("rank 1 failed on purpose")
                time.sleep(3600)
        train(cnn, data_cnn, 16, True, epochs=50, callbacks=[LambdaCallback(on_train_batch_end=on_batch)])
        print(f"rank {r}: finished (should not happen)", flush=True)


def _other_cnn():
    """The canonical CNN with 16 filters instead of 32."""
    from kilnet.layers import Conv2D, Dense, Flatten
    from kilnet.models import Sequential
    m = Sequential([Conv2D(16, (3, 3), activation="relu", input_shape=(28, 28, 1)), Flatten(),
                    Dense(10, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


if __name__ == "__main__":
    main()
