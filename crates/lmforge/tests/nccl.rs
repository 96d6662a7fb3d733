//! NCCL on one GPU (`--features cuda`; run by `scripts/gpu-check.sh`): the communicator
//! bootstraps with a 1-process job, and each collective of `distributed::nccl` — an all-reduce,
//! a reduce-scatter and an all-gather, through the padding helpers ZeRO uses — returns the
//! input's values from a tensor with an offset into its storage, also when called from another
//! thread (as the communication threads do). With one GPU this is what can run; the same code
//! path with several processes is tested on the CPU through host-staged MPI
//! (`distributed::tensor_comm::Staged`, the mpirun tests).
#![cfg(feature = "cuda")]

use candle_core::{Device, Tensor};
use lmforge::distributed::nccl::Nccl;
use lmforge::distributed::tensor_comm::{all_gather_v, reduce_scatter_v, TensorCollective};
use lmforge::distributed::SingleProcess;
use std::sync::Arc;

#[test]
fn one_process_nccl_collectives_return_their_input() {
    let device = Device::new_cuda(0).expect("the NCCL tests need a GPU");
    let nccl = Arc::new(Nccl::init(&SingleProcess, &device).unwrap());
    let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 7.0).collect();
    // An offset into a larger buffer, as a bucket cut from a flat tensor is.
    let whole = Tensor::new(values.as_slice(), &device).unwrap();
    let part = whole.narrow(0, 100, 777).unwrap();
    let want = values[100..877].to_vec();
    let got = |t: Tensor| t.to_vec1::<f32>().unwrap();
    assert_eq!(got(nccl.all_reduce_sum(&part).unwrap()), want);
    assert_eq!(got(reduce_scatter_v(&*nccl, &part, &[777], 0).unwrap()), want);
    assert_eq!(got(all_gather_v(&*nccl, &part, &[777]).unwrap()), want);
    assert_eq!(nccl.name(), "nccl");
    let from_thread = {
        let (nccl, part) = (nccl.clone(), part.clone());
        std::thread::spawn(move || nccl.all_reduce_sum(&part).unwrap().to_vec1::<f32>().unwrap()).join().unwrap()
    };
    assert_eq!(from_thread, want);
    assert!(nccl.all_reduce_sum(&Tensor::new(&[1f32], &Device::Cpu).unwrap()).is_err(), "a CPU tensor is refused");
}
