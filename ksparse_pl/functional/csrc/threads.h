/* How many of torch's OpenMP threads a kernel of ksparse_pl/functional/csrc uses. */
#ifndef KSPARSE_THREADS_H
#define KSPARSE_THREADS_H

#include <stdint.h>

#define GRAIN 32768 /* at::internal::GRAIN_SIZE */

/* At most one thread per GRAIN entries of work, as torch's own parallel loops: waking a thread for a small
 * batch costs more than the work, all the more on a busy machine. */
static inline int threads_for(int64_t work, int threads) {
    int64_t useful = work / GRAIN;
    if (threads > useful) threads = (int)useful;
    return threads < 1 ? 1 : threads;
}

#endif
