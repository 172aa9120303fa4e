"""C{qmailtx receiver}: one receiver process of C{twistd qmail --receivers N} (not run by hand)."""

from qmailtx import receiverchild


def main(argv):
    return receiverchild.main(argv)
