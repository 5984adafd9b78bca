import sys

from keras_hpdm.cli import main

sys.exit(main())
