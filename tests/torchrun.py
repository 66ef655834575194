"""The command line that starts N local processes under torchrun, for the multi-process tests (gloo on the CPU)."""
import socket
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(processes: int) -> list[str]:
    """``python -m torch.distributed.run`` for ``processes`` processes on this machine; append ``-m module ...``."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
