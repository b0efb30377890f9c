package relayclient

import "time"

// Until main (hard-relay) is merged: these exist there.
const reconfirmInterval = 200 * time.Millisecond
